"""How much data is k worth? The effective data multiplier of each k against the baseline (k = 1).

**Per budget, M(D).** At a size N where both have completed runs, k trained on D samples reaches the
loss the baseline reaches at M·D samples: the baseline's mean loss curve over its budgets (at that N) is
crossed at k's mean loss at D, interpolated linearly in log D (``efficiency.crossing``'s rule), and
M = D_baseline / D. Nothing is extrapolated: k's loss beyond the baseline's largest budget gives only a
lower bound on M (an open upper end), below its smallest only an upper bound.

Intervals reuse the calibrated estimators of ``reports.efficiency`` and ``reports.intervals``: with >= 2
seeds the seed-clustered t-bootstrap (each draw moves both mean curves by Gaussian-weighted sums of their
seeds' residual curves, t-scaled), censored draws entering at their bounds (``censored_interval``: an end
among them is open). With one seed there is no seed spread: the draws then move each point's log loss by
the parabolas' pooled residual (``approaches.noise_model``), also t-scaled, and the sentence says so.

**Inside the law, M_k.** Where the baseline's L(N, D) can be fitted (``reports.scaling``), one multiplier
per k: M_k minimises the squared log error of k's runs against L_1(N, M_k·D), the paper's claim in one
number. One law L(N, D) is fitted to both groups by least squares in log L, k's data scaled by M_k
(started from the M that fits k's runs best to the baseline's own law). Its interval: M_k's linearised
t-interval with each seed's offset a random effect (a seed's runs share it, and an offset of k's seeds moves
M_k directly): within-seed scatter plus the between-seed mean square, Satterthwaite's degrees of freedom.
With one seed in a group there is no interval: that seed's offset cannot be told from M_k. An M_k at the end
of the range searched for the start is reported open. Measured coverage: ``reports.isoflop_calibration``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

from . import intervals
from .approaches import design_points, noise_model
from .efficiency import censored_interval, ratio_draws
from .scaling.linearised import log_jacobian

LEVEL = 0.95
M_RANGE = (1 / 64, 64.0)  # multipliers searched inside the law
M_GRID = 801


@dataclass
class Multiplier:
    N: float
    D: float
    value: float  # M, or its bound when the point estimate is censored
    status: str  # reached | never (baseline never got there: M >= value) | before_first (M <= value)
    lo: float
    hi: float
    lo_open: bool
    hi_open: bool

    def text(self) -> str:
        prefix = {"never": ">=", "before_first": "<="}.get(self.status, "")
        lo = f"<={self.lo:.2f}" if self.lo_open else f"{self.lo:.2f}"
        hi = f">={self.hi:.2f}" if self.hi_open else f"{self.hi:.2f}"
        band = f" (95% CI {lo} to {hi})" if math.isfinite(self.lo) else " (no interval)"
        return f"N = {self.N:.3g}, D = {self.D:,.0f}: M = {prefix}{self.value:.2f}{band}"


def _curves(N: np.ndarray, D: np.ndarray, y: np.ndarray, seed: np.ndarray, n: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """(xs, Y[seed, x]) at size n over the budgets every seed has."""
    m = N == n
    seeds = sorted(set(seed[m].tolist()))
    per = {s: {float(d): float(v) for d, v, ss in zip(D[m], y[m], seed[m]) if ss == s} for s in seeds}
    xs = sorted(set.intersection(*(set(c) for c in per.values()))) if per else []
    return np.asarray(xs, dtype=float), np.array([[per[s][x] for x in xs] for s in seeds], dtype=float)


def _draws(Y: np.ndarray, se: float, df: int, rng: np.random.Generator, n_draws: int, scale: np.ndarray
           ) -> np.ndarray:
    if Y.shape[0] >= 2:
        return intervals.seed_clustered_mean_draws(Y, rng, n_draws, scale)
    if not math.isfinite(se) or df < 1:
        return np.broadcast_to(Y.mean(axis=0), (n_draws, Y.shape[1])).copy()
    return Y.mean(axis=0) + rng.standard_normal((n_draws, Y.shape[1])) * se * scale[:, None]


def same_sizes(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``other`` with the baseline's N for each size: with an ``S`` array (a size key both share, e.g. encoder
    parameters) a size is matched on it, since N may count a pixel head that grows with k; the rows of a size
    the baseline lacks are left out. Without ``S``, ``other`` as it is."""
    if "S" not in base or "S" not in other:
        return other
    n_of = {float(s): float(n) for s, n in zip(base["S"], base["N"])}
    keep = np.array([float(s) in n_of for s in other["S"]], dtype=bool)
    out = {k: np.asarray(v)[keep] for k, v in other.items()}
    out["N"] = np.array([n_of[float(s)] for s in out["S"]], dtype=float)
    return out


def per_budget(base: dict[str, Any], other: dict[str, Any], n_draws: int = 2000, seed: int = 0,
               level: float = LEVEL) -> tuple[list[Multiplier], str]:
    """M(D) at every (N, D) where both groups have completed runs and the baseline has >= 2 budgets at N.
    ``base``/``other``: arrays N, D, L, F (FLOPs per image), seed (one row per trial), optionally S (a size
    key, see ``same_sizes``)."""
    other = same_sizes(base, other)
    rng = np.random.default_rng(seed)
    arrays = [{k: np.asarray(g[k], dtype=float if k != "seed" else object) for k in ("N", "D", "L", "F", "seed")}
              for g in (base, other)]
    b, o = arrays
    ses, dfs, sources = [], [], []
    for g in arrays:
        p = design_points(g["N"], g["D"], g["L"], g["F"], g["seed"])
        se, df, source = noise_model(p)
        ses.append(float(np.nanmedian(se)) if len(se) and np.isfinite(se).any() else float("nan"))
        dfs.append(df)
        sources.append(source)
    several = len(set(b["seed"].tolist())) > 1 and len(set(o["seed"].tolist())) > 1
    df = dfs[0] + dfs[1] if several else min(dfs)
    how = "seed-clustered t-bootstrap" if several else f"t-calibrated parametric bootstrap on {sources[0]}"
    out = []
    for n in sorted(set(b["N"].tolist()) & set(o["N"].tolist())):
        bx, bY = _curves(b["N"], b["D"], -np.log(b["L"]), b["seed"], n)
        ox, oY = _curves(o["N"], o["D"], -np.log(o["L"]), o["seed"], n)
        if len(bx) < 2:
            continue
        # with seeds, the seed-clustered draws' own degrees of freedom (as efficiency.ratio_interval): the
        # seeds of the two curves at this size, not every point's
        scale = intervals.t_scale_draws(rng, n_draws, (len(bY) - 1) + (len(oY) - 1) if several else df)
        bdraw = _draws(bY, ses[0], dfs[0], rng, n_draws, scale)
        odraw = _draws(oY, ses[1], dfs[1], rng, n_draws, scale)
        noisy = not np.allclose(bdraw, bdraw[:1])
        for j, d in enumerate(ox):
            inv, status = ratio_draws(np.array([d]), oY.mean(axis=0)[None, j:j + 1], bx, bY.mean(axis=0)[None, :])
            inv_d, st_d = ratio_draws(np.array([d]), odraw[:, j:j + 1], bx, bdraw)
            if noisy:
                ci = censored_interval(inv_d, st_d, level)  # on D / D_baseline = 1 / M: the ends swap
                lo, hi = 1 / ci["hi"], 1 / ci["lo"]
                lo_open, hi_open = ci["hi_open"], ci["lo_open"]
            else:
                lo = hi = float("nan")
                lo_open = hi_open = False
            out.append(Multiplier(float(n), float(d), float(1 / inv[0]), str(status[0]), lo, hi, lo_open, hi_open))
    return out, how


@dataclass
class LawMultiplier:
    value: float
    lo: float
    hi: float
    at_edge: bool  # the estimate or an interval end at the searched range's end (open)
    n_points: int
    note: str = ""

    def text(self) -> str:
        if not math.isfinite(self.value):
            return f"inside the law: no multiplier ({self.note})"
        edge = f" (at the end of the searched {M_RANGE[0]:.3g}-{M_RANGE[1]:g}: open)" if self.at_edge else ""
        band = f" (95% CI {self.lo:.2f} to {self.hi:.2f})" if math.isfinite(self.lo) else ""
        note = f"; {self.note}" if self.note else ""
        return (f"inside one law L(N, M·D) fitted to both: M = {self.value:.2f}{band}{edge}, from "
                f"{self.n_points} design points{note}")


def _best_m(params: dict[str, np.ndarray], N: np.ndarray, D: np.ndarray, logL: np.ndarray) -> np.ndarray:
    """argmin over a log grid of M of sum (log L - log L_law(N, M D))^2, per draw of params (draws,)."""
    grid = np.exp(np.linspace(math.log(M_RANGE[0]), math.log(M_RANGE[1]), M_GRID))
    E, A, B = (np.atleast_1d(np.asarray(params[k], dtype=float)) for k in ("E", "A", "B"))
    al, be = (np.atleast_1d(np.asarray(params[k], dtype=float)) for k in ("alpha", "beta"))
    # (draws, grid, points)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        pred = (E[:, None, None] + A[:, None, None] * N[None, None, :] ** -al[:, None, None]
                + B[:, None, None] * (grid[None, :, None] * D[None, None, :]) ** -be[:, None, None])
        sse = np.sum((np.log(pred) - logL[None, None, :]) ** 2, axis=2)
    sse = np.where(np.isfinite(sse), sse, np.inf)
    return grid[np.argmin(sse, axis=1)]


def _joint_design(fit: Any, base: dict[str, Any], other: dict[str, Any]) -> dict[str, np.ndarray]:
    """Both groups' runs on the baseline fit's normalised scale: log N, log D, log L, which rows are k's, and a
    cluster per (group, seed): the runs of one seed share its offset."""
    refs = fit.refs
    joined = {k: np.concatenate([np.asarray(base[k], dtype=float), np.asarray(other[k], dtype=float)])
              for k in ("N", "D", "L")}
    is_k = np.r_[np.zeros(len(base["N"])), np.ones(len(other["N"]))]
    clusters = [f"base:{s}" for s in base["seed"]] + [f"k:{s}" for s in other["seed"]]
    return {"logs": np.vstack([np.log(joined["N"] / refs[0]), np.log(joined["D"] / refs[1])]),
            "ly": np.log(joined["L"] / refs[2]), "is_k": is_k,
            "cluster": np.unique(np.asarray(clusters), return_inverse=True)[1]}


def _joint_jacobian(form: Any, p: np.ndarray, design: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Log predictions of one law for both groups, k's data scaled by M (p = theta, then log M), and their
    Jacobian: the D term's exponent beta times its share is how log L moves with log M."""
    theta, log_m = p[:-1], p[-1]
    log_n, log_d = design["logs"]
    z, J = log_jacobian(form, theta, [log_n, log_d + design["is_k"] * log_m], len(design["ly"]))
    beta = theta[-1]
    return z, np.column_stack([J, -beta * J[:, 1] * design["is_k"]])


def _variance_components(J: np.ndarray, resid: np.ndarray, cluster: np.ndarray, is_k: np.ndarray
                         ) -> tuple[float, float] | None:
    """(variance, t degrees of freedom) of log M (the last parameter) from the joint fit's residuals, a seed's
    offset shared by its runs a random effect: the within-seed scatter on every run, the between-seed mean
    square on each seed's summed influence, combined by Satterthwaite. None without the degrees of freedom."""
    n, k = J.shape
    ids = np.unique(cluster)
    C = len(ids)
    df_within, df_between = n - C - (k - 2), C - 2  # the law and M absorb one level per group
    if df_within < 1 or df_between < 1:
        return None
    influence = np.linalg.pinv(J)[-1]  # d log M / d log L of each run, linearised
    means = np.array([resid[cluster == c].mean() for c in ids])
    within = sum(float(np.sum((resid[cluster == c] - m) ** 2)) for c, m in zip(ids, means)) / df_within
    group = np.array([int(is_k[cluster == c][0]) for c in ids])
    between = sum(float(np.sum((means[group == g] - means[group == g].mean()) ** 2)) for g in (0, 1)) / df_between
    summed = np.array([influence[cluster == c].sum() for c in ids])
    v_within, v_between = within * float(influence @ influence), between * float(summed @ summed)
    variance = v_within + v_between
    df = variance**2 / (v_within**2 / df_within + v_between**2 / df_between)
    return variance, float(df)


def in_law(base: dict[str, Any], other: dict[str, Any], n_boot: int = 200, seed: int = 0,
           level: float = LEVEL, seed_offsets: bool = True) -> LawMultiplier:
    """One multiplier for ``other``: one law L(N, D) fitted to both groups by least squares in log L, k's data
    scaled by M (rows as in ``per_budget``). The interval is M's linearised t-interval with each seed's offset
    a random effect (``_variance_components``); with one seed in a group there is none, since that seed's
    offset cannot be told from M. ``seed_offsets=False`` treats every run as independent (the plain t-interval
    on n - p df): measured to under-cover, kept to show why the offsets count."""
    from .scaling import fit_chinchilla

    other = same_sizes(base, other)
    N, D, L = (np.asarray(other[k], dtype=float) for k in ("N", "D", "L"))
    points = len(np.unique(np.column_stack([N, D]), axis=0)) if len(N) else 0
    nan = float("nan")
    try:
        fit = fit_chinchilla(base["N"], base["D"], base["L"], n_boot=n_boot, seed=seed)
    except ValueError as e:
        return LawMultiplier(nan, nan, nan, False, points, f"the baseline's law: {e}")
    if not fit.has_frontier:
        return LawMultiplier(nan, nan, nan, False, points, "the baseline's law has no D term")
    if points < 2:
        return LawMultiplier(nan, nan, nan, False, points, "fewer than 2 design points")
    start = float(_best_m({k: np.array([v]) for k, v in fit.params.items()}, N, D, np.log(L))[0])
    design = _joint_design(fit, base, other)
    solved = optimize.least_squares(lambda p: _joint_jacobian(fit.form, p, design)[0] - design["ly"],
                                    np.r_[fit.theta, math.log(start)],
                                    jac=lambda p: _joint_jacobian(fit.form, p, design)[1], method="lm",
                                    xtol=1e-12, ftol=1e-12)
    log_m = float(solved.x[-1])
    if not (solved.success and math.isfinite(log_m)):
        return LawMultiplier(start, nan, nan, False, points, "the joint fit did not converge (M from the "
                                                             "baseline's law alone)")
    value = math.exp(log_m)
    notes = [] if fit.identifiable else \
        ["the baseline's law is not identifiable by the report's checks (read as descriptive)"]
    lo = hi = nan
    seeds = [len(set(np.asarray(g["seed"]).tolist())) for g in (base, other)]
    z, J = _joint_jacobian(fit.form, solved.x, design)
    if not seed_offsets:
        df = len(z) - J.shape[1]
        if df >= 1:
            s2 = float(np.sum((design["ly"] - z) ** 2)) / df
            half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(s2 * np.linalg.pinv(J.T @ J)[-1, -1])
            lo, hi = math.exp(log_m - half), math.exp(log_m + half)
        notes.insert(0, "runs treated as independent (seeds' offsets ignored)")
    elif min(seeds) < 2:
        notes.insert(0, "no interval with one seed in a group: its offset cannot be told from M")
    else:
        components = _variance_components(J, design["ly"] - z, design["cluster"], design["is_k"])
        if components is None:
            notes.insert(0, "no interval: too few runs per seed")
        else:
            variance, df = components
            half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(variance)
            lo, hi = math.exp(log_m - half), math.exp(log_m + half)
            notes.insert(0, f"each seed's offset a random effect, t on {df:.0f} df")
    edge = any(v <= M_RANGE[0] or v >= M_RANGE[1] for v in (value, lo, hi) if math.isfinite(v))
    return LawMultiplier(value, lo, hi, edge, points, "; ".join(notes))
