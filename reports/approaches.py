"""Chinchilla's three approaches to the compute-optimal model size, side by side (Hoffmann et al. 2022,
Sec. 3; Besiroglu et al. 2024), each giving N_opt(C) ∝ C^a with an interval on a:

1. **Envelope.** For each compute line, the size whose completed run has the lowest loss. Only runs
   with their schedule completed count (a separate run or a wsd branch after its cooldown: docs/design.md,
   principle 4), so each run gives one point, not a whole training curve; N_opt can only be one of the
   grid's sizes, so a is resolved to the grid's step.
2. **isoFLOP parabolas.** For each line with >= 3 sizes, a parabola in log N through log L; its vertex
   is N_opt(C). A line whose parabola opens downward, or whose vertex lies more than one grid step past
   its sizes, has no optimum (counted, never extrapolated).
3. **The fitted law** L(N, D) = E + A/N^alpha + B/D^beta (``reports.scaling``, approach 3 as in the
   report), its frontier solved under xtra's own affine FLOPs per image (``scaling.compute``); a is the
   local exponent at the geometric mean of the lines' compute, where approaches 1 and 2's secant slope
   is centred.

Compute is each trial's own FLOPs per image x samples; lines are found again by grouping compute values
within ``LINE_GAP`` (so any study whose trials fall on lines works, not only an isoflop
study). Seeds are replicates of one design point (N, D): approaches 1 and 2 use their mean log loss.

Intervals (approaches 1 and 2): a t-calibrated parametric bootstrap. Each draw moves every design
point's mean log loss by its standard error (the pooled within-point seed spread over sqrt(seeds) with
>= 2 seeds somewhere, else the pooled residual of the parabolas), every draw scaled by one
sqrt(df / chi2_df) (``intervals.t_scale_draws``), then reruns the approach. Draws that give no optimum
on too few lines are counted and reported beside the interval (``failed``). Approach 3's interval is the
law's t-calibrated linearised draws (``scaling.linearised``). The three are compared, never merged:
intervals that do not overlap are named as a disagreement. Measured coverage: ``reports.isoflop_calibration``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import intervals

LEVEL = 0.95
MIN_SIZES = 3  # sizes a line needs for a parabola
MIN_LINES = 2  # lines an exponent needs
VERTEX_REACH = 1.0  # grid steps past the smallest / largest size a vertex may lie and still count
ASYMMETRY = 0.25  # a vertex this close (share of the size span) to an end makes the grid asymmetric
APPROACHES = ("1: envelope", "2: isoFLOP parabolas", "3: L(N, D) law")
LINE_GAP = 1.25  # compute values within this factor of the previous one are one isoFLOP line


def group_lines(compute: Any, gap: float = LINE_GAP) -> list[int]:
    """A line index per compute value: sorted values within ``gap`` of the previous one share a line."""
    compute = [float(c) for c in compute]
    order = sorted(range(len(compute)), key=lambda i: compute[i])
    out = [0] * len(compute)
    line, prev = 0, None
    for i in order:
        if prev is not None and compute[i] > prev * gap:
            line += 1
        out[i] = line
        prev = compute[i]
    return out


@dataclass
class Points:
    """The design points of one group (e.g. one k): unique (N, D), their compute, line and mean log loss."""

    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    line: np.ndarray
    log_loss: np.ndarray  # mean over seeds
    seeds: np.ndarray  # replicates per point
    within_sd: float  # pooled seed spread of log loss (nan with one seed everywhere)
    within_df: int

    @property
    def line_compute(self) -> np.ndarray:
        """Geometric mean compute of each line, by line index."""
        return np.array([math.exp(np.mean(np.log(self.C[self.line == i]))) for i in range(self.n_lines)])

    @property
    def n_lines(self) -> int:
        return int(self.line.max()) + 1 if len(self.line) else 0


def design_points(N: Any, D: Any, L: Any, flops_per_image: Any, seed: Any) -> Points:
    """Rows (one per trial) -> design points: seeds of one (N, D) averaged in log loss."""
    N, D, L, F = (np.asarray(v, dtype=float) for v in (N, D, L, flops_per_image))
    seed = np.asarray(seed)
    keys = np.column_stack([N, D])
    groups = intervals.point_groups(keys)
    n = int(groups.max()) + 1 if len(groups) else 0
    logs = np.log(L)
    pn, pd, pc, pl_, ps = (np.zeros(n) for _ in range(5))
    ss, df = 0.0, 0
    for g in range(n):
        m = groups == g
        pn[g], pd[g], pc[g] = N[m][0], D[m][0], float(np.mean(F[m])) * D[m][0]
        pl_[g], ps[g] = logs[m].mean(), m.sum()
        if m.sum() > 1:
            ss += float(np.sum((logs[m] - logs[m].mean()) ** 2))
            df += int(m.sum()) - 1
    del seed  # replicates are counted per point; which seed does not matter here
    line = np.asarray(group_lines(list(pc)), dtype=int) if n else np.zeros(0, dtype=int)
    return Points(pn, pd, pc, line, pl_, ps, math.sqrt(ss / df) if df else float("nan"), df)


# ---------------------------------------------------------------------------------------------
# N_opt per line, vectorised over draws of the mean log losses (draws, points)


def _parabola_vertex(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertex x of the least-squares parabola of each row of y (draws, n) on x (n,), and its curvature."""
    X = np.column_stack([x**2, x, np.ones_like(x)])
    coef = np.linalg.pinv(X) @ y.T  # (3, draws)
    a, b = coef[0], coef[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(a > 0, -b / (2 * a), np.nan)
    return vertex, a


def _step(x: np.ndarray) -> float:
    u = np.unique(x)
    return float(np.median(np.diff(u))) if len(u) > 1 else float("nan")


def line_optima(p: Points, y: np.ndarray, approach: int) -> np.ndarray:
    """log N_opt (draws, lines) by approach 1 (argmin) or 2 (parabola vertex); NaN where a line has none."""
    y = np.atleast_2d(y)
    out = np.full((y.shape[0], p.n_lines), np.nan)
    for i in range(p.n_lines):
        m = p.line == i
        x = np.log(p.N[m])
        if approach == 1:
            if len(np.unique(x)) >= MIN_SIZES:  # an argmin at the smallest or largest size brackets nothing
                best = x[np.argmin(y[:, m], axis=1)]
                out[:, i] = np.where((best > x.min()) & (best < x.max()), best, np.nan)
            continue
        if len(np.unique(x)) < MIN_SIZES:
            continue
        vertex, _ = _parabola_vertex(x, y[:, m])
        reach = VERTEX_REACH * _step(x)
        ok = (vertex >= x.min() - reach) & (vertex <= x.max() + reach)
        out[:, i] = np.where(ok, vertex, np.nan)
    return out


def _slopes(log_c: np.ndarray, log_n: np.ndarray) -> np.ndarray:
    """OLS slope of log N_opt on log C per draw over the lines with an optimum (NaN with < MIN_LINES)."""
    out = np.full(log_n.shape[0], np.nan)
    ok = np.isfinite(log_n)
    for counts in np.unique(ok.sum(axis=1)):
        if counts < MIN_LINES:
            continue
        rows = np.flatnonzero(ok.sum(axis=1) == counts)
        for r in rows:
            m = ok[r]
            if np.ptp(log_c[m]) > 0:
                out[r] = np.polyfit(log_c[m], log_n[r, m], 1)[0]
    return np.round(out, 12) + 0.0  # one size on every line: a slope of 0, not 2e-15


def parabola_residual(p: Points) -> tuple[float, int]:
    """Pooled residual sd of the lines' parabolas in log loss and its degrees of freedom."""
    ss, df = 0.0, 0
    for i in range(p.n_lines):
        m = p.line == i
        x, y = np.log(p.N[m]), p.log_loss[m]
        if len(np.unique(x)) < MIN_SIZES or len(x) <= 3:
            continue
        coef = np.polyfit(x, y, 2)
        ss += float(np.sum((y - np.polyval(coef, x)) ** 2))
        df += len(x) - 3
    return (math.sqrt(ss / df), df) if df else (float("nan"), 0)


def noise_model(p: Points) -> tuple[np.ndarray, int, str]:
    """(standard error of each point's mean log loss, degrees of freedom, where it comes from)."""
    if p.within_df >= 1:
        return p.within_sd / np.sqrt(p.seeds), p.within_df, f"seed spread ({p.within_df} df)"
    s, df = parabola_residual(p)
    if df >= 1:
        return np.full(len(p.N), s), df, f"the parabolas' residual ({df} df; one seed)"
    return np.full(len(p.N), np.nan), 0, "none (one seed and no parabola residual)"


def loss_draws(p: Points, rng: np.random.Generator, n_draws: int) -> tuple[np.ndarray, str]:
    """(n_draws, points) draws of the mean log losses (t-calibrated); a repeat of the means without noise."""
    se, df, source = noise_model(p)
    if df < 1:
        return np.broadcast_to(p.log_loss, (n_draws, len(p.N))).copy(), source
    scale = intervals.t_scale_draws(rng, n_draws, df)
    return p.log_loss + rng.standard_normal((n_draws, len(p.N))) * se * scale[:, None], source


@dataclass
class Exponent:
    approach: str
    value: float
    lo: float
    hi: float
    failed: float  # share of draws without an exponent (too few lines with an optimum)
    lines: list[dict[str, float]] = field(default_factory=list)  # C, N_opt, lo, hi per line
    note: str = ""

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def text(self) -> str:
        if not math.isfinite(self.value):
            return f"approach {self.approach}: no exponent ({self.note or 'too few lines with an optimum'})"
        band = f" (95% CI {self.lo:.3g} to {self.hi:.3g})" if self.has_interval else " (no interval)"
        failed = f", {self.failed:.0%} of draws without one" if self.failed > 0 else ""
        note = f"; {self.note}" if self.note else ""
        return f"approach {self.approach}: a = {self.value:.3g}{band}{failed}{note}"


def empirical_exponent(p: Points, approach: int, draws: np.ndarray, level: float = LEVEL) -> Exponent:
    """Approach 1 or 2 on the point means, with the interval over the loss draws."""
    log_c = np.log(p.line_compute)
    point = line_optima(p, p.log_loss[None, :], approach)[0]
    value = _slopes(log_c, point[None, :])[0]
    per_draw = line_optima(p, draws, approach)
    slopes = _slopes(log_c, per_draw)
    noisy = not np.allclose(draws, draws[:1])
    lo, hi = intervals.percentile_interval(slopes, level) if noisy else (float("nan"), float("nan"))
    failed = float(np.mean(~np.isfinite(slopes))) if noisy else float(not math.isfinite(value))
    note = ""
    if not math.isfinite(value):  # no exponent from the data themselves: a few draws' slopes are no interval
        lo = hi = float("nan")
    elif noisy and failed > (1 - level) / 2:
        note = f"interval over the {1 - failed:.0%} of draws with an optimum on >= {MIN_LINES} lines"
    if approach == 1 and math.isfinite(value):
        # N_opt is one of the grid's sizes: each line's is known to half a step either way, so the slope
        # only to within step / (the lines' span in log C); the interval is widened by that much.
        steps = [_step(np.log(p.N[p.line == i])) for i in range(p.n_lines)]
        res = float(np.nanmedian(steps)) / float(np.ptp(log_c)) if np.ptp(log_c) > 0 else float("nan")
        if math.isfinite(res):
            lo = (lo if math.isfinite(lo) else value) - res
            hi = (hi if math.isfinite(hi) else value) + res
            note = "; ".join(x for x in (note, f"widened by +-{res:.2g}: N_opt is resolved to the grid's step") if x)
    rows = []
    for i, c in enumerate(p.line_compute):
        blo, bhi = intervals.percentile_interval(per_draw[:, i], level) if noisy else (float("nan"),) * 2
        rows.append({"C": float(c), "N_opt": float(np.exp(point[i])), "lo": float(np.exp(blo)),
                     "hi": float(np.exp(bhi)), "no_optimum": float(np.mean(~np.isfinite(per_draw[:, i])))})
    return Exponent(APPROACHES[approach - 1], float(value), lo, hi, failed, rows, note)


def law_exponent(p: Points, rows: dict[str, np.ndarray], n_boot: int, seed: int = 0) -> tuple[Exponent, Any]:
    """Approach 3: the report's L(N, D) fit (every trial; seeds resampled together) under the trials' own
    affine FLOPs per image, its local exponent at the lines' geometric mean compute."""
    from .scaling import AffineCompute, fit_chinchilla

    c_ref = float(math.exp(np.mean(np.log(p.line_compute)))) if p.n_lines else float("nan")
    try:
        compute = AffineCompute.from_trials(rows["N"], rows["F"])
        fit = fit_chinchilla(rows["N"], rows["D"], rows["L"], n_boot=n_boot, seed=seed, compute=compute,
                             reference_compute=c_ref)
    except ValueError as e:
        return Exponent(APPROACHES[2], float("nan"), float("nan"), float("nan"), 1.0, note=str(e)), None
    a = fit.exponents[0]
    lo, hi = fit.exponents_ci["a"]
    lines = []
    if fit.has_frontier and fit.n_boot >= 2:
        for c in p.line_compute:
            band = fit.allocation(float(c))["N_opt"]
            lines.append({"C": float(c), "N_opt": band[0], "lo": band[1], "hi": band[2], "no_optimum": 0.0})
    notes = [] if math.isfinite(a) else ["the fitted law gives no compute-optimal N at these budgets"]
    if not math.isfinite(a):
        lo = hi = float("nan")
    if not fit.identifiable:
        notes.append("the full L(N, D) is not identifiable by the report's checks: descriptive")
    note = "; ".join(notes)
    return Exponent(APPROACHES[2], float(a), lo, hi, 0.0, lines, note), fit


def agreement(exps: list[Exponent]) -> str:
    """'agree' when every two intervals overlap; else which pairs do not (never a pick of one)."""
    have = [e for e in exps if math.isfinite(e.value) and e.has_interval]
    if len(have) < 2:
        return "cannot compare: fewer than two approaches have an interval"
    apart = [f"{a.approach.split(':')[0]} vs {b.approach.split(':')[0]}" for i, a in enumerate(have)
             for b in have[i + 1:] if a.hi < b.lo or b.hi < a.lo]
    names = ", ".join(e.approach.split(":")[0] for e in have)
    if not apart:
        return f"approaches {names} agree: their 95% intervals on a overlap"
    return f"approaches disagree: the 95% intervals of {'; '.join(apart)} do not overlap"


def grid_bias(p: Points, fit: Any) -> str:
    """Approach 2's known bias, stated with the grid's step: a parabola in log N is exact only for a
    loss parabolic in log N around a centred minimum. The bias on this grid is measured by running
    approach 2 on the noise-free losses of approach 3's law at the same design points."""
    steps = [_step(np.log(p.N[p.line == i])) for i in range(p.n_lines)]
    steps = [s for s in steps if math.isfinite(s)]
    if not steps:
        return "approach 2: no line has two sizes"
    step = float(np.median(steps))
    point = line_optima(p, p.log_loss[None, :], 2)[0]
    edges = []
    for i in range(p.n_lines):
        x = np.log(p.N[p.line == i])
        if math.isfinite(point[i]) and np.ptp(x) > 0:
            where = (point[i] - x.min()) / np.ptp(x)
            if where < ASYMMETRY or where > 1 - ASYMMETRY:
                edges.append(f"C = {p.line_compute[i]:.3g}")
    text = (f"approach 2's grid: sizes {math.exp(step):.2f}x apart (step {step / math.log(10):.3f} in log10 N); "
            f"its vertex is exact only for a loss parabolic in log N around a centred minimum")
    text += (f"; the vertex sits in the outer quarter of the sizes on {', '.join(edges)} (an asymmetric grid "
             f"pulls it toward the centre)" if edges else "; every vertex lies in the middle half of its sizes")
    if fit is not None and fit.has_frontier:
        clean = np.log(fit.predict(p.N, p.D))
        law_a2 = _slopes(np.log(p.line_compute), line_optima(p, clean[None, :], 2))[0]
        if math.isfinite(law_a2):
            text += (f"; on approach 3's noise-free law at these points approach 2 reads a = {law_a2:.3g} where the "
                     f"law's own is {fit.exponents[0]:.3g}: a grid bias of {law_a2 - fit.exponents[0]:+.3g}")
    return text


@dataclass
class Approaches:
    exponents: list[Exponent]
    verdict: str
    bias: str
    noise: str
    n_lines: int
    points: Points


def three_approaches(N: Any, D: Any, L: Any, flops_per_image: Any, seed: Any, n_boot: int = 200,
                     n_draws: int = 2000, rng_seed: int = 0) -> Approaches:
    """Approaches 1, 2 and 3 on one group's trials (one row per trial; L: the loss)."""
    p = design_points(N, D, L, flops_per_image, seed)
    rng = np.random.default_rng(rng_seed)
    draws, source = loss_draws(p, rng, n_draws)
    e1 = empirical_exponent(p, 1, draws)
    e2 = empirical_exponent(p, 2, draws)
    rows = {"N": np.asarray(N, dtype=float), "D": np.asarray(D, dtype=float), "L": np.asarray(L, dtype=float),
            "F": np.asarray(flops_per_image, dtype=float)}
    e3, fit = law_exponent(p, rows, n_boot, rng_seed)
    exps = [e1, e2, e3]
    return Approaches(exps, agreement(exps), grid_bias(p, fit), source, p.n_lines, p)


def supports(N: Any, D: Any, flops_per_image: Any) -> bool:
    """Whether the trials lie on >= 2 compute lines with >= 3 sizes each (what approach 2 needs)."""
    N = np.asarray(N, dtype=float)
    c = np.asarray(flops_per_image, dtype=float) * np.asarray(D, dtype=float)
    if len(c) == 0:
        return False
    line = np.asarray(group_lines(list(c)))
    return sum(len(np.unique(N[line == i])) >= MIN_SIZES for i in np.unique(line)) >= MIN_LINES
