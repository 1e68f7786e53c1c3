"""Interval estimators with measured coverage, shared by the efficiency ratios and the scaling fits.

Each one is run on synthetic studies from a known truth by ``reports.calibration`` and its measured
coverage is published in docs/reports.md (docs/design.md, principle 5). Two ideas carry them:

* **Seed-clustered draws.** A seed is one replicate of a whole curve (its budgets share the seed's
  initialisation and data order, so their noise is correlated). Draws of a mean curve perturb it by a
  Gaussian-weighted sum of the seeds' residual curves, so they keep the curve's correlation across
  budgets and never treat the points of one seed as independent.
* **t-calibration.** With 3 seeds a bootstrap of the mean can only reach the lowest and highest seed
  (about +-0.85 sigma where the t-interval is +-2.5 sigma: 81% coverage measured). Every draw is
  scaled by sqrt(df / chi2_df), df = the residual degrees of freedom, so a linear function of the
  means gets exactly the Student-t interval and a smooth non-linear one (a crossing, a ratio) gets its
  delta-method analogue.

``grouped_resamples`` resamples design points with all their replicates (seeds) together, never one row
at a time (the law multiplier's resample of k's points). The law fits' own intervals are linearised
least-squares t-intervals (``reports.scaling.linearised``).
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
METHOD_RATIO = "seed-clustered t-bootstrap"  # the name the sentences and docs/reports.md use
EVIDENCE = "docs/reports.md#calibrated-intervals"  # where each estimator's measured coverage is published


def t_scale_draws(rng: np.random.Generator, n_draws: int, df: int) -> np.ndarray:
    """sqrt(df / chi2_df) per draw: multiplying a Gaussian draw by it gives a Student-t draw with df
    degrees of freedom (the uncertainty of a variance estimated from df residuals). df < 1: ones."""
    if df < 1:
        return np.ones(n_draws)
    return np.sqrt(df / rng.chisquare(df, size=n_draws))


def seed_clustered_mean_draws(Y: np.ndarray, rng: np.random.Generator, n_draws: int,
                              scale: np.ndarray | None = None) -> np.ndarray:
    """Draws of the mean curve of Y (n_seeds, n_points): mean + scale * z @ R / sqrt(n (n - 1)) with
    z ~ N(0, I_n) and R the seeds' residual curves. Their covariance is the sample covariance / n, with
    the correlation along each seed's curve kept; `scale` (n_draws,) t-calibrates them
    (``t_scale_draws``). One seed: the mean itself, repeated (nothing to resample)."""
    Y = np.asarray(Y, dtype=float)
    n = Y.shape[0]
    mean = Y.mean(axis=0)
    if n < 2:
        return np.broadcast_to(mean, (n_draws, Y.shape[1])).copy()
    resid = Y - mean
    z = rng.standard_normal((n_draws, n))
    shift = z @ resid / np.sqrt(n * (n - 1))
    if scale is not None:
        shift *= np.asarray(scale, dtype=float)[:, None]
    return mean + shift


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def point_groups(X: np.ndarray) -> np.ndarray:
    """Group id per row of X (n, m): rows with the same design point (e.g. one (N, D) pair, its seeds
    being replicates) share an id, in order of first appearance."""
    X = np.asarray(X, dtype=float)
    X = X[:, None] if X.ndim == 1 else X
    _, first, inverse = np.unique(X, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber the groups by first appearance
    return order[np.asarray(inverse).ravel()]


def grouped_resamples(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one cluster-bootstrap resample: groups drawn with replacement, each bringing all
    its rows (the seeds of one design point stay together)."""
    groups = np.asarray(groups)
    ids = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in ids]
    pick = rng.integers(0, len(ids), size=len(ids))
    return np.concatenate([members[i] for i in pick])

