"""Diagnostics: what decides whether a fitted form is a law (parameters at a bound or negligible, in
many of the interval's draws too, interval widths, points per parameter)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .forms import (
    COEF_BOUND,
    EXP_BOUNDS,
    LOGLIN_EXP_BOUND,
    MAX_BOOT_AT_BOUND,
    MAX_REL_CI,
    MIN_POINTS_PER_PARAM,
    NAMES_2D,
    NEGLIGIBLE,
    Form,
    log_predict,
)


@dataclass(frozen=True)
class Diagnostics:
    """What decides whether a fit is a law. ``problems`` empty = identifiable."""

    n_points: int  # distinct design points (replicate seeds of one point count once)
    n_params: int
    rmse_log: float  # RMSE of log(prediction) - log(L) on the fitted points
    rel_ci: dict[str, float]  # (hi - lo) / |value| per parameter (NaN without intervals)
    at_bounds: tuple[str, ...]  # "alpha = 0 (its lower bound)", "E negligible", ...
    boot_at_bounds: dict[str, float]  # share of the draws with the parameter at or beyond a bound
    problems: tuple[str, ...]
    caveats: tuple[str, ...] = ()

    @property
    def points_per_param(self) -> float:
        return self.n_points / self.n_params

    @property
    def identifiable(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return "; ".join(self.problems) if self.problems else "identifiable"


def _bound_hits(form: Form, theta: np.ndarray, logs: Sequence[np.ndarray], names: Sequence[str],
                e_name: str = "E") -> list[tuple[str, str]]:
    """(parameter, why) for parameters at or near a bound, or belonging to a negligible term."""
    hits: list[tuple[str, str]] = []
    m = len(form.terms)
    if form.is_constant:
        return hits
    if form.loglinear:
        for j in range(m):
            if abs(theta[1 + j]) >= 0.99 * LOGLIN_EXP_BOUND:
                hits.append((names[1 + j], f"{names[1 + j]} = {theta[1 + j]:.3g} (at its bound)"))
        return hits
    off = m + int(form.has_e)
    lo, hi = EXP_BOUNDS
    for j in range(m):
        p = theta[off + j]
        if p <= lo + 1e-3:
            hits.append((names[m + j], f"{names[m + j]} = {p:.2g} (at its lower bound)"))
        elif p >= hi - 1e-2:
            hits.append((names[m + j], f"{names[m + j]} = {p:.3g} (at its upper bound)"))
        elif p * float(np.ptp(logs[j])) < 1e-2 and form.has_e:  # the term is flat over the data: a second E
            hits.append((names[m + j], f"{names[m + j]} = {p:.2g} (the term is constant over the data)"))
    for i in range(m + int(form.has_e)):
        if abs(theta[i]) >= COEF_BOUND - 1.0:
            name = e_name if (form.has_e and i == m) else names[i]
            hits.append((name, f"{name} at its bound"))
    # Shares of each term in the prediction at every point: one below NEGLIGIBLE everywhere is not determined.
    z = log_predict(form, theta, logs)
    for j in range(m):
        share = np.exp(theta[j] - theta[off + j] * logs[j] - z)
        if share.max() < NEGLIGIBLE:
            hits.append((names[j], f"the {names[j]} term is negligible (< {NEGLIGIBLE:g} of L at every point)"))
    if form.has_e and np.exp(theta[m] - z).max() < NEGLIGIBLE:
        hits.append((e_name, f"E negligible (< {NEGLIGIBLE:g} of L at every point: E → 0)"))
    return hits


def _draw_bound_shares(form: Form, draws: np.ndarray, logs: Sequence[np.ndarray], names: Sequence[str],
                       e_name: str = "E") -> dict[str, float]:
    """Per parameter, the share of `draws` (k, ...) in which ``_bound_hits`` would name it (all at once)."""
    m, n = len(form.terms), len(draws)
    hit: dict[str, np.ndarray] = {}

    def add(name: str, mask: np.ndarray) -> None:
        hit[name] = hit.get(name, np.zeros(n, dtype=bool)) | mask

    if form.is_constant or not n:
        return {}
    if form.loglinear:
        for j in range(m):
            add(names[1 + j], np.abs(draws[:, 1 + j]) >= 0.99 * LOGLIN_EXP_BOUND)
    else:
        off = m + int(form.has_e)
        lo, hi = EXP_BOUNDS
        for j in range(m):
            p = draws[:, off + j]
            flat = p * float(np.ptp(logs[j])) < 1e-2 if form.has_e else np.zeros(n, dtype=bool)
            add(names[m + j], (p <= lo + 1e-3) | (p >= hi - 1e-2) | flat)
        for i in range(m + int(form.has_e)):
            add(e_name if (form.has_e and i == m) else names[i], np.abs(draws[:, i]) >= COEF_BOUND - 1.0)
        with np.errstate(over="ignore", invalid="ignore"):
            z = log_predict(form, draws, logs)
            for j in range(m):
                share = np.exp(draws[:, j, None] - draws[:, off + j, None] * logs[j] - z)
                add(names[j], share.max(axis=1) < NEGLIGIBLE)
            if form.has_e:
                add(e_name, np.exp(draws[:, m, None] - z).max(axis=1) < NEGLIGIBLE)
    return {name: float(mask.mean()) for name, mask in hit.items() if mask.any()}


def diagnose(form: Form, theta: np.ndarray, boot: np.ndarray, logs: Sequence[np.ndarray], ly: np.ndarray,
              params: dict[str, float], ci: dict[str, tuple[float, float]], internal_names: Sequence[str],
              n_boot_asked: int, n_design_points: int | None = None) -> Diagnostics:
    # points per parameter count design points: the seeds of one (N, D) are replicates, not new points
    n, k = (len(ly) if n_design_points is None else n_design_points), form.n_params
    resid = log_predict(form, theta, logs, len(ly)) - ly
    rmse = float(np.sqrt(np.mean(resid**2)))
    problems: list[str] = []
    caveats: list[str] = []
    if n / k < MIN_POINTS_PER_PARAM:
        problems.append(f"{n} distinct points for {k} parameters (a law needs >= {MIN_POINTS_PER_PARAM:g} per "
                        f"parameter; seeds repeat a point, they do not add one)")
    hits = _bound_hits(form, theta, logs, internal_names)
    problems += [why for _, why in hits]
    boot_hits: dict[str, float] = {}
    if len(boot):
        boot_hits = _draw_bound_shares(form, boot, logs, internal_names)
        already = {nm for nm, _ in hits}
        for nm, share in boot_hits.items():
            if share > MAX_BOOT_AT_BOUND and nm not in already:
                problems.append(f"{nm} beyond a bound in {share:.0%} of its interval's draws")
    rel: dict[str, float] = {}
    for name, value in params.items():
        lo, hi = ci[name]
        rel[name] = (hi - lo) / abs(value) if math.isfinite(lo) and math.isfinite(hi) and value != 0 else float("nan")
    gated = [nm for nm in params if nm == "E" or nm in NAMES_2D.exponents]
    for nm in gated:
        if not form.is_constant and math.isfinite(rel[nm]) and rel[nm] > MAX_REL_CI:
            lo, hi = ci[nm]
            problems.append(f"{nm}'s 95% interval [{lo:.3g}, {hi:.3g}] is {rel[nm]:.1f}x its value {params[nm]:.3g}")
    if n_boot_asked == 0:
        caveats.append("no intervals asked for (n_boot=0): identifiability judged without them")
    elif not len(boot):
        problems.append(f"no interval: {n} runs leave no residual degrees of freedom for {k} parameters")
    if form.is_constant:
        problems.append("a constant is not a scaling law")
    return Diagnostics(n_points=n, n_params=k, rmse_log=rmse, rel_ci=rel, at_bounds=tuple(w for _, w in hits),
                       boot_at_bounds=boot_hits, problems=tuple(problems), caveats=tuple(caveats))
