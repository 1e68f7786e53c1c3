"""Before a study runs: can its scaling fits pass at all? Counts the points a planned grid gives each
law against what ``select``/``diagnostics`` demand (points per parameter, distinct values, the
held-out refit without the largest budget), so `xtra study show` can say so before any GPU-hour."""

from __future__ import annotations

from collections.abc import Sequence

from .forms import FORMS_1D, FORMS_2D, MIN_POINTS_PER_PARAM

MIN_FIT_X = 4  # distinct x values before the report fits a power law (reports.law_panels)
MIN_PAIRS = 6  # distinct (N, D) pairs before the report fits L(N, D) (reports.compute_panels)


def _need(n_params: int) -> int:
    return int(-(-MIN_POINTS_PER_PARAM * n_params // 1))


def law_checks(trials: Sequence[tuple[str, float, float]]) -> list[str]:
    """What the report's scaling fits can do with these trials: (group, parameters, samples), one per
    trial (seeds repeat a point; the report fits each group of the other swept values on its own). One
    line per law and group (identical lines merged): whether its full form can pass the checks. Points are
    distinct design points: seeds are replicates of one."""
    by_group: dict[str, list[tuple[float, float]]] = {}
    for group, n_params, samples in trials:
        by_group.setdefault(group, []).append((n_params, samples))
    lines: dict[str, list[str]] = {}
    for group, points in by_group.items():
        for line in _checks(points):
            lines.setdefault(line, []).append(group)
    if len(by_group) == 1:
        return list(lines)
    return [f"{line} ({'each group' if len(g) == len(by_group) else ', '.join(g)})" for line, g in lines.items()]


def _checks(points: Sequence[tuple[float, float]]) -> list[str]:
    # A law counts design points: the seeds of one (N, D) are replicates (the fits resample and
    # cross-validate them together), so they narrow its noise but never add a point.
    ns = sorted({p[0] for p in points})
    ds = sorted({p[1] for p in points})
    pairs = len(set(points))
    n = pairs if len(ns) > 1 and len(ds) > 1 else max(len(ns), len(ds))
    out: list[str] = []
    if len(ns) > 1 and len(ds) > 1:
        k = FORMS_2D[0].n_params
        need = _need(k)
        held = n - sum(1 for p in set(points) if p[1] == ds[-1])
        if pairs < MIN_PAIRS:
            out.append(f"L(N, D): {pairs} distinct (N, D) points: the report needs >= {MIN_PAIRS} to fit it at all "
                       f"(add widths or budgets)")
        elif n < need:
            out.append(f"L(N, D): {n} points for {k} parameters: the full law cannot pass (a law needs >= "
                       f"{need}, {MIN_POINTS_PER_PARAM:g} per parameter; add widths or budgets: seeds repeat a point)")
        else:
            out.append(f"L(N, D): {n} distinct (N, D) points, {n / k:.1f} per parameter: the full law can "
                       f"pass; the held-out check refits it on {held} points (without the largest budget)"
                       + ("" if held >= need else f", under the {need} a law needs: a weak check"))
        return out
    if len(ns) > 1 or len(ds) > 1:
        what, xs = ("parameters", ns) if len(ns) > 1 else ("samples", ds)
        k = FORMS_1D[0].n_params
        need = _need(k)
        if len(xs) < MIN_FIT_X:
            out.append(f"loss vs {what}: {len(xs)} distinct values: the report fits a power law from {MIN_FIT_X} "
                       f"(nothing to fit)")
        elif n < need:
            out.append(f"loss vs {what}: {n} points for {k} parameters: the law cannot pass (needs >= {need})")
        else:
            out.append(f"loss vs {what}: {n} points, {n / k:.1f} per parameter: the law can pass")
    return out
