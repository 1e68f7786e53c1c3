"""The law intervals: a least-squares refit in log L, linearised at its optimum, with a Student-t calibration.

The point estimate stays the Huber fit (Chinchilla's approach 3). Its intervals come from the least-squares fit
of the same form, started from it (a Levenberg-Marquardt refit within the optimiser's bounds), because the
sampling distribution of a least-squares fit has a textbook approximation (Bates & Watts 1988, ch. 2) and
the Huber fit's (delta 1e-3 puts every residual of a 1% noise in its linear arm: a least-absolute-deviation
fit) does not:

    cov(theta) = s^2 (J^T J)^-1,   s^2 = sum of squared log residuals / (n - p),   t with n - p df

J is the Jacobian of the log prediction at the least-squares optimum, n the runs, p the parameters. Every
parameter the report names is exp(linear) or linear in theta (log E, log A = c + alpha log ref, alpha), so
its interval is exact in that scale: value +- t * se, exponentiated for coefficients. Derived quantities
(compute-optimal N, D, D/N, local exponents, prediction bands) take percentiles over t-calibrated Gaussian
draws of theta (``draws``): each draw is centre + sqrt(df / chi2_df) * z @ L^T with L L^T = cov.

The calibration suite (``reports.calibration.laws``) measures this on synthetic studies with seed offsets and
per-run noise at 3, 5 and 10 seeds; the coverage per interval kind is in docs/calibration-cpu.md. It replaced a
cluster bootstrap over design points, whose 5 to 9 points resampled gave 67-86% coverage for some intervals
and cost 300 refits a fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..intervals import t_scale_draws
from .forms import COEF_BOUND, EXP_BOUNDS, LOGLIN_EXP_BOUND, Form, ParamNames, log_predict

METHOD_LAW = "linearised least-squares t-interval"  # the name docs/reports.md and the reports use
MAX_ITERATIONS = 100
SINGULAR = 1e-10  # singular values of J below this share of the largest carry no information
UNSEEN = 1e6  # 1 / singular value given to such a direction (its interval spans any plausible value)


def log_jacobian(form: Form, theta: np.ndarray, logs: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(z, J): log predictions (n,) on the normalised scale and their Jacobian (n, k) in theta."""
    theta = np.asarray(theta, dtype=float)
    z = log_predict(form, theta, logs, n)
    J = np.empty((n, len(theta)))
    if form.loglinear or form.is_constant:
        J[:, 0] = 1.0
        for j, lg in enumerate(logs):
            J[:, 1 + j] = -lg
        return z, J
    m = len(logs)
    off = m + int(form.has_e)
    for j in range(m):
        w = np.exp(theta[j] - theta[off + j] * logs[j] - z)  # d z / d c_j: the term's share of the prediction
        J[:, j] = w
        J[:, off + j] = -w * logs[j]
    if form.has_e:
        J[:, m] = np.exp(theta[m] - z)
    return z, J


def _clip(form: Form, theta: np.ndarray) -> np.ndarray:
    if form.is_constant:
        return theta
    if form.loglinear:
        return np.concatenate([theta[:1], np.clip(theta[1:], -LOGLIN_EXP_BOUND, LOGLIN_EXP_BOUND)])
    off = len(form.terms) + int(form.has_e)
    return np.concatenate([np.clip(theta[:off], -COEF_BOUND, COEF_BOUND), np.clip(theta[off:], *EXP_BOUNDS)])


def least_squares_refit(form: Form, theta: np.ndarray, logs: Sequence[np.ndarray], ly: np.ndarray) -> np.ndarray:
    """The least-squares fit of log L from `theta` (Levenberg-Marquardt, steps clipped to the bounds)."""
    theta = np.asarray(theta, dtype=float).copy()
    z, J = log_jacobian(form, theta, logs, len(ly))
    sse = float(np.sum((ly - z) ** 2))
    damping = 1e-3
    for _ in range(MAX_ITERATIONS):
        r = ly - z
        JtJ = J.T @ J
        step = np.linalg.lstsq(JtJ + damping * np.diag(np.diag(JtJ) + 1e-12), J.T @ r, rcond=None)[0]
        trial = _clip(form, theta + step)
        z_new = log_predict(form, trial, logs, len(ly))
        sse_new = float(np.sum((ly - z_new) ** 2))
        if np.isfinite(sse_new) and sse_new <= sse:
            done = sse - sse_new <= 1e-14 * max(sse, 1e-300) or np.max(np.abs(trial - theta)) < 1e-11
            theta, sse = trial, sse_new
            z, J = log_jacobian(form, theta, logs, len(ly))
            damping = max(damping / 10, 1e-12)
            if done:
                break
        else:
            damping *= 10
            if damping > 1e10:
                break
    return theta


@dataclass(frozen=True)
class Linearised:
    """The least-squares centre, the covariance of theta and the t degrees of freedom of its scale."""

    centre: np.ndarray
    cov_factor: np.ndarray  # L with L L^T = cov(theta)
    df: int
    scatter: float  # residual standard deviation of one run, log L
    resid: np.ndarray

    def t_quantile(self, level: float) -> float:
        return float(stats.t.ppf(0.5 + level / 2, self.df))

    def interval(self, gradient: np.ndarray, const: float, level: float) -> tuple[float, float]:
        """value +- t * se of the linear function gradient @ theta + const."""
        value = float(gradient @ self.centre) + const
        half = self.t_quantile(level) * float(np.linalg.norm(gradient @ self.cov_factor))
        return value - half, value + half

    def draws(self, n_draws: int, rng: np.random.Generator) -> np.ndarray:
        """(n_draws, k) t-calibrated Gaussian draws of theta around the centre."""
        z = rng.standard_normal((n_draws, self.cov_factor.shape[1]))
        return self.centre + (z @ self.cov_factor.T) * t_scale_draws(rng, n_draws, self.df)[:, None]


def linearise(form: Form, theta: np.ndarray, logs: Sequence[np.ndarray], ly: np.ndarray) -> Linearised | None:
    """The least-squares refit from the Huber fit `theta` and its linearised covariance; None when there are
    no residual degrees of freedom (runs <= parameters)."""
    n, k = len(ly), len(theta)
    if n <= k:
        return None
    centre = least_squares_refit(form, theta, logs, ly)
    z, J = log_jacobian(form, centre, logs, n)
    resid = ly - z
    df = n - k
    s = math.sqrt(float(resid @ resid) / df)
    _, sv, vt = np.linalg.svd(J, full_matrices=False)
    seen = sv > SINGULAR * sv[0]
    # a direction J does not see gets a huge variance, not none: the data do not pin it
    inv = np.where(seen, 1.0 / np.where(seen, sv, 1.0), UNSEEN)
    return Linearised(centre=centre, cov_factor=(vt.T * inv) * s, df=df, scatter=s, resid=resid)


def natural_linear(form: Form, refs: Sequence[float], names: ParamNames) -> dict[str, tuple[np.ndarray, float, bool]]:
    """Per named parameter: (gradient, constant, log_scale) with log(param) (log_scale) or param equal to
    gradient @ theta + constant (theta internal, refs the geometric means the inputs were divided by)."""
    k = form.n_params
    m = len(form.terms)
    log_y = math.log(refs[-1])
    out: dict[str, tuple[np.ndarray, float, bool]] = {}

    def unit(i: int) -> np.ndarray:
        v = np.zeros(k)
        v[i] = 1.0
        return v

    if form.is_constant:
        return {"E": (unit(0), log_y, True)}
    if form.loglinear:
        g = unit(0)
        for i, j in enumerate(form.terms):
            g[1 + i] = math.log(refs[j])
        out["C"] = (g, log_y, True)
        for i, j in enumerate(form.terms):
            out[names.exponents[j]] = (unit(1 + i), 0.0, False)
        return out
    off = m + int(form.has_e)
    if form.has_e:
        out["E"] = (unit(m), log_y, True)
    for i, j in enumerate(form.terms):
        g = unit(i)
        g[off + i] = math.log(refs[j])
        out[names.coefs[j]] = (g, log_y, True)
    for i, j in enumerate(form.terms):
        out[names.exponents[j]] = (unit(off + i), 0.0, False)
    return out


def parameter_intervals(lin: Linearised, form: Form, refs: Sequence[float], names: ParamNames,
                        point: dict[str, float], level: float) -> dict[str, tuple[float, float]]:
    """Each named parameter's interval in the caller's units, widened to hold the reported (Huber) value
    when that falls outside (it is the interval of the least-squares fit; the two fits differ a little)."""
    out = {}
    for name, (gradient, const, log_scale) in natural_linear(form, refs, names).items():
        lo, hi = lin.interval(gradient, const, level)
        if log_scale:
            with np.errstate(over="ignore"):
                lo, hi = float(np.exp(lo)), float(np.exp(hi))
        value = point[name]
        out[name] = (min(lo, value), max(hi, value)) if math.isfinite(value) else (lo, hi)
    return out


METHOD_REFIT = "refitting bootstrap-t"  # the prediction interval where the linearised one does not hold


def bootstrap_t_band(form: Form, lin: Linearised, logs: Sequence[np.ndarray], ly: np.ndarray,
                     logs_new: Sequence[np.ndarray], level: float, n_draws: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A prediction interval for new runs (log L, normalised scale) where the linearised one does not hold (the
    refit sits at a bound, e.g. a negligible E when the largest N is left out): a parametric bootstrap that
    refits the least-squares law to each simulated data set and studentizes a new run's error by its own
    linearised standard error (Davison & Hinkley 1997, sec. 6.3.3). The interval is the linearised one's
    centre and width, with the bootstrap's quantiles of the studentized error in place of t's."""
    n = len(ly)
    centre = lin.centre
    fitted = log_predict(form, centre, logs, n)
    n_new = len(logs_new[0]) if logs_new else 0
    z_new, J_new = log_jacobian(form, centre, logs_new, n_new)
    se_new = np.sqrt(np.sum((J_new @ lin.cov_factor) ** 2, axis=1) + lin.scatter**2)
    studentized = np.empty((n_draws, n_new))
    for b in range(n_draws):
        simulated = fitted + lin.scatter * rng.standard_normal(n)
        refit = linearise(form, centre, logs, simulated)
        if refit is None:
            return np.full(n_new, np.nan), np.full(n_new, np.nan)
        z_b, J_b = log_jacobian(form, refit.centre, logs_new, n_new)
        se_b = np.sqrt(np.sum((J_b @ refit.cov_factor) ** 2, axis=1) + refit.scatter**2)
        new_run = z_new + lin.scatter * rng.standard_normal(n_new)
        studentized[b] = (z_b - new_run) / se_b
    q_lo, q_hi = np.quantile(studentized, [0.5 - level / 2, 0.5 + level / 2], axis=0)
    return z_new - q_hi * se_new, z_new - q_lo * se_new
