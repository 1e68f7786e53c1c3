"""Scaling-law forms and their optimiser: input checks, the forms (sums of power terms, log-linear, a
constant), Huber objectives on normalised logs, starting points and L-BFGS-B.

A saturating theta is (c_1..c_m, [e], p_1..p_m): term j is  c_j - p_j * log(x_j / ref_j), the
constant is e; a log-linear theta is (c, p_1..p_m). Inputs are divided by their geometric means, so
one grid of starting points suits losses of any scale and x in any unit.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3
LEVEL = 0.95
COEF_BOUND = 50.0  # |log coefficient| on the normalised scale
EXP_BOUNDS = (0.0, 10.0)  # exponents of the saturating forms
LOGLIN_EXP_BOUND = 10.0  # |exponent| of the log-linear form
MIN_POINTS_PER_PARAM = 2.0  # fewer points per parameter than this: not a law
MAX_REL_CI = 1.0  # E or an exponent whose 95% interval is wider than its value: not determined
NEGLIGIBLE = 1e-4  # a term below this share of the prediction at every point is not determined
MAX_BOOT_AT_BOUND = 0.25  # share of a fit's parameter draws at or beyond a bound before it counts
LOO_MAX_POINTS = 20  # leave-one-out up to this many points, else K-fold
K_FOLDS = 5


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """L-BFGS-B makes thousands of tiny BLAS calls; a threaded BLAS on a busy machine spins on each
    (30x slower measured on 2 shared cores). One thread is always fastest for these 3-5 parameters."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ---------------------------------------------------------------------------------------------
# Input checks: every degenerate input is one clear ValueError.


def _as_array(name: str, values: Any) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (got shape {arr.shape})")
    return arr


def check_arrays(arrays: dict[str, Any], n_params: int, what: str) -> list[np.ndarray]:
    out = [_as_array(name, v) for name, v in arrays.items()]
    lengths = {name: len(a) for name, a in zip(arrays, out)}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        raise ValueError(f"length mismatch: {desc} values")
    for name, arr in zip(arrays, out):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"{name} contains NaN or inf (at index {int(bad[0])}); drop those points before fitting")
        bad = np.flatnonzero(arr <= 0)
        if bad.size:
            raise ValueError(f"{name} must be > 0 for a log-space fit (got {arr[bad[0]]!r} at index {int(bad[0])})")
    n = len(out[0])
    if n < n_params:
        raise ValueError(f"{what} has {n_params} parameters but only {n} points were given (need at least {n_params})")
    return out


def check_boot(n_boot: int) -> None:
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 0:
        raise ValueError(f"n_boot={n_boot!r} must be an integer >= 0")


def geomean(a: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(a))))


def percentile_ci(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


# ---------------------------------------------------------------------------------------------
# Forms. A form is a sum of power terms (one per variable it uses) plus, optionally, a constant E;
# or a log-linear law (a product of powers); the constant form is the "no scaling" null.


@dataclass(frozen=True)
class Form:
    name: str
    terms: tuple[int, ...]  # input columns that have a power term
    has_e: bool = True
    loglinear: bool = False

    @property
    def n_params(self) -> int:
        if self.loglinear:
            return 1 + len(self.terms)
        return 2 * len(self.terms) + int(self.has_e)

    @property
    def is_constant(self) -> bool:
        return not self.terms

    def formula(self, var_names: Sequence[str], coef_names: Sequence[str], exp_names: Sequence[str]) -> str:
        if self.is_constant:
            return "L = E"
        if self.loglinear:
            return "L = C · " + " · ".join(f"{var_names[j]}^-{exp_names[j]}" for j in self.terms)
        parts = (["E"] if self.has_e else []) + [f"{coef_names[j]}·{var_names[j]}^-{exp_names[j]}" for j in self.terms]
        return "L = " + " + ".join(parts)


CONSTANT = Form("constant (no scaling)", ())
FORMS_1D = (Form("full", (0,)), Form("E = 0 (log-linear)", (0,), has_e=False), CONSTANT)
FORMS_2D = (Form("full", (0, 1)), Form("E = 0", (0, 1), has_e=False), Form("N only", (0,)), Form("D only", (1,)),
            Form("log-linear", (0, 1), loglinear=True), Form("N only, E = 0", (0,), loglinear=True),
            Form("D only, E = 0", (1,), loglinear=True), CONSTANT)


@dataclass(frozen=True)
class ParamNames:
    variables: tuple[str, ...]
    coefs: tuple[str, ...]
    exponents: tuple[str, ...]


NAMES_1D = ParamNames(("x",), ("A",), ("alpha",))
NAMES_2D = ParamNames(("N", "D"), ("A", "B"), ("alpha", "beta"))


# ---------------------------------------------------------------------------------------------
# Objectives on normalised logs: ``logs`` holds log(x_j / ref_j) for the form's terms, ``ly`` log(L / ref).
# A saturating theta is (c_1..c_m, [e], p_1..p_m): term j is  c_j - p_j * logs_j , the constant is e.
# A log-linear theta is (c, p_1..p_m): log-prediction c - sum_j p_j * logs_j.


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    a = np.abs(r)
    c = np.minimum(a, delta)  # c * (|r| - c/2): r^2/2 inside the band, delta * (|r| - delta/2) outside
    return c * (a - 0.5 * c), np.copysign(c, r)


def _sum_objective(theta: np.ndarray, logs: Sequence[np.ndarray], ly: np.ndarray, delta: float,
                   has_e: bool) -> tuple[float, np.ndarray]:
    """Sum of Huber(r) / delta and its gradient for one theta (the optimiser's hot loop: few numpy ops)."""
    m = len(logs)
    off = m + int(has_e)
    terms = [theta[j] - theta[off + j] * logs[j] for j in range(m)]
    if has_e:
        terms.append(np.full_like(ly, theta[m]))
    z = terms[0]
    for t in terms[1:]:
        z = np.logaddexp(z, t)
    h, dh = _huber(z - ly, delta)
    g = dh / delta
    grad = np.empty_like(theta)
    for j in range(m):
        gw = g * np.exp(terms[j] - z)  # softmax weight of term j = d z / d c_j
        grad[j] = gw.sum()
        grad[off + j] = -gw.dot(logs[j])
    if has_e:
        grad[m] = g.dot(np.exp(terms[m] - z))
    return float(h.sum()) / delta, grad


def _linear_objective(theta: np.ndarray, logs: Sequence[np.ndarray], ly: np.ndarray,
                      delta: float) -> tuple[float, np.ndarray]:
    z = theta[0] - sum(theta[1 + j] * lg for j, lg in enumerate(logs)) if logs else np.full_like(ly, theta[0])
    h, dh = _huber(z - ly, delta)
    g = dh / delta
    grad = np.empty_like(theta)
    grad[0] = g.sum()
    for j, lg in enumerate(logs):
        grad[1 + j] = -g.dot(lg)
    return float(h.sum()) / delta, grad


def log_predict(form: Form, theta: np.ndarray, logs: Sequence[np.ndarray], n: int | None = None) -> np.ndarray:
    """theta (..., k) -> log-predictions (..., n) on the normalised scale (``n`` for the constant form)."""
    theta = np.asarray(theta, dtype=float)
    n = len(logs[0]) if logs else int(n or 0)
    if form.loglinear or form.is_constant:
        out = np.broadcast_to(theta[..., 0, None], theta.shape[:-1] + (n,)).copy()
        for j, lg in enumerate(logs):
            out = out - theta[..., 1 + j, None] * lg
        return out
    m = len(logs)
    off = m + int(form.has_e)
    parts = [theta[..., j, None] - theta[..., off + j, None] * logs[j] for j in range(m)]
    if form.has_e:
        parts.append(np.broadcast_to(theta[..., m, None], parts[0].shape))
    return np.logaddexp.reduce(np.stack(parts, axis=-2), axis=-2)


def _grid(m: int, has_e: bool) -> np.ndarray:
    coef = np.linspace(-5.0, 1.0, 7 if m > 1 else 13)
    expo = (0.1, 0.25, 0.5, 1.0, 1.5) if m > 1 else (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0)
    es = coef if has_e else (None,)
    rows = [(*c, *([e] if has_e else []), *p) for c in itertools.product(coef, repeat=m) for e in es
            for p in itertools.product(expo, repeat=m)]
    return np.asarray(rows, dtype=float)


def _bounds(form: Form) -> list[tuple[float | None, float | None]]:
    m = len(form.terms)
    if form.is_constant:
        return [(None, None)]
    if form.loglinear:
        return [(None, None)] + [(-LOGLIN_EXP_BOUND, LOGLIN_EXP_BOUND)] * m
    return [(-COEF_BOUND, COEF_BOUND)] * (m + int(form.has_e)) + [EXP_BOUNDS] * m


FIT_OPTIONS = {"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-10}
# Refits (cross-validation folds) stop earlier: there are hundreds of them per report.
REFIT_OPTIONS = {"maxiter": 200, "ftol": 1e-10, "gtol": 1e-7}


def minimize_from_starts(form: Form, starts: Sequence[np.ndarray], logs: Sequence[np.ndarray], ly: np.ndarray,
              delta: float, options: dict[str, float] = FIT_OPTIONS) -> tuple[np.ndarray, float]:
    if form.loglinear or form.is_constant:
        fun: Callable[..., tuple[float, np.ndarray]] = _linear_objective
        args: tuple = (logs, ly, delta)
    else:
        fun, args = _sum_objective, (logs, ly, delta, form.has_e)
    best_theta, best_f = None, np.inf
    for x0 in starts:
        res = minimize(fun, x0, args=args, jac=True, method="L-BFGS-B", bounds=_bounds(form), options=options)
        if np.all(np.isfinite(res.x)) and res.fun < best_f:
            best_theta, best_f = res.x, float(res.fun)
    if best_theta is None:  # every start diverged: keep the first start, flagged by its loss
        best_theta, best_f = np.asarray(starts[0], dtype=float), float("inf")
    return best_theta, best_f


def grid_starts(form: Form, logs: Sequence[np.ndarray], ly: np.ndarray, delta: float, n: int = 5) -> list[np.ndarray]:
    """The ``n`` best points of the grid of starts on these data (the least-squares line for log-linear)."""
    if form.is_constant:
        return [np.array([float(np.median(ly))])]
    if form.loglinear:
        X = np.column_stack([np.ones_like(ly)] + [-lg for lg in logs])
        sol, *_ = np.linalg.lstsq(X, ly, rcond=None)
        return [sol]
    grid = _grid(len(logs), form.has_e)
    losses = np.empty(len(grid))
    # predictions at each distinct design point only (the seeds of a point share it), losses on every run
    points, inverse = np.unique(np.column_stack(logs), axis=0, return_inverse=True)
    point_logs = [points[:, j] for j in range(points.shape[1])]
    inverse = np.asarray(inverse).ravel()
    chunk = max(1, 2_000_000 // max(1, len(ly) * (len(logs) + 1)))
    for i in range(0, len(grid), chunk):
        z = log_predict(form, grid[i:i + chunk], point_logs)[:, inverse]
        losses[i:i + chunk] = _huber(z - ly, delta)[0].sum(axis=-1)
    return [grid[i] for i in np.argsort(losses)[:n]]


REFIT_STARTS = 2  # grid starts of a refit's own data, beside the warm start


def refit_starts(form: Form, logs: Sequence[np.ndarray], ly: np.ndarray, warm: np.ndarray | None = None
                 ) -> list[np.ndarray]:
    """Starts for a refit on a subset (a cross-validation fold): the best grid points
    of the subset's own data, so a refit can leave the full fit's basin, plus ``warm`` when given. A
    cross-validation fold gets no warm start: the full fit has seen its held-out points."""
    own = grid_starts(form, logs, ly, HUBER_DELTA, n=REFIT_STARTS)
    return own if warm is None else [warm, *own]
