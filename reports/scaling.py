"""Scaling-law fits, and the checks that decide whether a fit is a law.

Every form is fitted the Chinchilla "approach 3" way (Hoffmann et al. 2022, Sec. 3.3 and App. D.2): a
Huber loss (delta 1e-3) between ``log L`` and the form's log prediction, computed with log-sum-exp
so no term under- or overflows, minimised with L-BFGS-B from the best points of a grid of starts.
Bootstrap confidence intervals resample the points with replacement, refit (starting from the full
fit), and take the 2.5 / 97.5 percentiles of every parameter.

Internally the inputs are divided by their geometric means, so one grid of starting points suits
losses of any scale and x in any unit (samples seen, parameters, FLOPs); the parameters reported are
in the caller's units.

    L(x)    = E + A * x**-alpha                          fit_power_law(x, y)
    L(N, D) = E + A / N**alpha + B / D**beta             fit_chinchilla(N, D, L)

A fit alone is not a law. The critiques of the Chinchilla fits (Besiroglu et al. 2024: intervals far
too narrow for the data, a fit that does not describe its own points) set the checks made here:

* ``Diagnostics``: parameters at or near a bound of the optimiser (or a term too small to matter,
  which the data cannot pin down), parameters that hit a bound in many bootstrap refits, the relative
  width of each interval, the RMSE of the log-space residuals, and points per parameter. A fit is
  *identifiable* only when none of these fails.
* ``compare_forms``: the full form against reduced ones (E = 0; one variable, with or without E; a
  plain log-linear law; a constant, i.e. no scaling at all) by cross-validated error (leave-one-out up to
  ``LOO_MAX_POINTS`` points, else 5-fold). The simplest form within one standard error of the best
  is chosen (the one-standard-error rule); the constant winning means the data hold no law.
* ``held_out``: refit the chosen form on every point but the largest budget (or compute) and predict
  the held-out runs, with a 95% prediction interval (bootstrap fits plus resampled residuals).

Compute-optimal allocation uses ``C = c * N * D``; ``c = 6`` is the language-model rule (6 FLOPs per
parameter per token). For images pass ``flops_per_param_sample = flops_per_image / n_params`` (about
``6 * tokens``), so that ``C`` is in real training FLOPs and ``D`` in images.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
MAX_BOOT_AT_BOUND = 0.25  # share of bootstrap refits with a parameter at a bound before it counts
LOO_MAX_POINTS = 20  # leave-one-out up to this many points, else K-fold
K_FOLDS = 5


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
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


def _check(arrays: dict[str, Any], n_params: int, what: str) -> list[np.ndarray]:
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


def _check_boot(n_boot: int) -> None:
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 0:
        raise ValueError(f"n_boot={n_boot!r} must be an integer >= 0")


def _geomean(a: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log(a))))


def _percentiles(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
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
class _Names:
    variables: tuple[str, ...]
    coefs: tuple[str, ...]
    exponents: tuple[str, ...]


NAMES_1D = _Names(("x",), ("A",), ("alpha",))
NAMES_2D = _Names(("N", "D"), ("A", "B"), ("alpha", "beta"))


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


def _log_predict(form: Form, theta: np.ndarray, logs: Sequence[np.ndarray], n: int | None = None) -> np.ndarray:
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
# Refits warm-started from the full fit (bootstrap, cross-validation) stop earlier: they move little, and
# there are hundreds of them per report.
REFIT_OPTIONS = {"maxiter": 200, "ftol": 1e-10, "gtol": 1e-7}


def _minimize(form: Form, starts: Sequence[np.ndarray], logs: Sequence[np.ndarray], ly: np.ndarray,
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


def _starts(form: Form, logs: Sequence[np.ndarray], ly: np.ndarray, delta: float) -> list[np.ndarray]:
    if form.is_constant:
        return [np.array([float(np.median(ly))])]
    if form.loglinear:
        X = np.column_stack([np.ones_like(ly)] + [-lg for lg in logs])
        sol, *_ = np.linalg.lstsq(X, ly, rcond=None)
        return [sol]
    grid = _grid(len(logs), form.has_e)
    losses = np.empty(len(grid))
    chunk = max(1, 2_000_000 // max(1, len(ly) * (len(logs) + 1)))
    for i in range(0, len(grid), chunk):
        z = _log_predict(form, grid[i:i + chunk], logs)
        losses[i:i + chunk] = _huber(z - ly, delta)[0].sum(axis=-1)
    return [grid[i] for i in np.argsort(losses)[:5]]


# ---------------------------------------------------------------------------------------------
# Diagnostics


@dataclass(frozen=True)
class Diagnostics:
    """What decides whether a fit is a law. ``problems`` empty = identifiable."""

    n_points: int
    n_params: int
    rmse_log: float  # RMSE of log(prediction) - log(L) on the fitted points
    rel_ci: dict[str, float]  # (hi - lo) / |value| per parameter (NaN without bootstrap)
    at_bounds: tuple[str, ...]  # "alpha = 0 (its lower bound)", "E negligible", ...
    boot_at_bounds: dict[str, float]  # share of bootstrap refits with the parameter at a bound
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
    z = _log_predict(form, theta, logs)
    for j in range(m):
        share = np.exp(theta[j] - theta[off + j] * logs[j] - z)
        if share.max() < NEGLIGIBLE:
            hits.append((names[j], f"the {names[j]} term is negligible (< {NEGLIGIBLE:g} of L at every point)"))
    if form.has_e and np.exp(theta[m] - z).max() < NEGLIGIBLE:
        hits.append((e_name, f"E negligible (< {NEGLIGIBLE:g} of L at every point: E → 0)"))
    return hits


def _diagnose(form: Form, theta: np.ndarray, boot: np.ndarray, logs: Sequence[np.ndarray], ly: np.ndarray,
              params: dict[str, float], ci: dict[str, tuple[float, float]], internal_names: Sequence[str],
              n_boot_asked: int) -> Diagnostics:
    n, k = len(ly), form.n_params
    resid = _log_predict(form, theta, logs, len(ly)) - ly
    rmse = float(np.sqrt(np.mean(resid**2)))
    problems: list[str] = []
    caveats: list[str] = []
    if n / k < MIN_POINTS_PER_PARAM:
        problems.append(f"{n} points for {k} parameters (a law needs >= {MIN_POINTS_PER_PARAM:g} per parameter)")
    hits = _bound_hits(form, theta, logs, internal_names)
    problems += [why for _, why in hits]
    boot_hits: dict[str, float] = {}
    if len(boot):
        counts: dict[str, int] = {}
        for b in boot:
            for name in {nm for nm, _ in _bound_hits(form, b, logs, internal_names)}:
                counts[name] = counts.get(name, 0) + 1
        boot_hits = {nm: c / len(boot) for nm, c in counts.items()}
        already = {nm for nm, _ in hits}
        for nm, share in boot_hits.items():
            if share > MAX_BOOT_AT_BOUND and nm not in already:
                problems.append(f"{nm} at a bound in {share:.0%} of bootstrap refits")
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
        caveats.append("no bootstrap: intervals not computed, identifiability judged without them")
    elif len(boot) < max(2, n_boot_asked // 2):
        problems.append(f"only {len(boot)} of {n_boot_asked} bootstrap resamples could be fitted")
    if form.is_constant:
        problems.append("a constant is not a scaling law")
    return Diagnostics(n_points=n, n_params=k, rmse_log=rmse, rel_ci=rel, at_bounds=tuple(w for _, w in hits),
                       boot_at_bounds=boot_hits, problems=tuple(problems), caveats=tuple(caveats))


# ---------------------------------------------------------------------------------------------
# One fitted form


@dataclass
class FormFit:
    """A fitted form: parameters in the caller's units, percentile bootstrap intervals, diagnostics."""

    form: Form
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    n_points: int
    loss: float  # mean Huber loss on the points
    n_boot: int
    diagnostics: Diagnostics
    names: _Names = NAMES_1D
    level: float = LEVEL
    _refs: tuple[float, ...] = field(default=(1.0, 1.0), repr=False)  # one per variable, then L
    _theta: np.ndarray = field(default_factory=lambda: np.zeros(1), repr=False, compare=False)
    _boot: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)), repr=False, compare=False)
    _resid: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    x_range: tuple[tuple[float, float], ...] = ()  # (min, max) of each variable over the fitted points

    @property
    def identifiable(self) -> bool:
        return self.diagnostics.identifiable

    @property
    def formula(self) -> str:
        return self.form.formula(self.names.variables, self.names.coefs, self.names.exponents)

    def _logs(self, X: np.ndarray) -> list[np.ndarray]:
        return [np.log(X[:, j] / self._refs[j]) for j in self.form.terms]

    def _predict_matrix(self, X: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
        t = self._theta if theta is None else theta
        return self._refs[-1] * np.exp(_log_predict(self.form, t, self._logs(X), len(X)))

    def _band(self, X: np.ndarray, level: float | None) -> tuple[np.ndarray, np.ndarray]:
        level = self.level if level is None else level
        if len(self._boot) < 2:
            nan = np.full(len(X), np.nan)
            return nan, nan
        preds = self._predict_matrix(X, self._boot)  # (n_boot, n)
        lo, hi = np.percentile(preds, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return lo, hi

    def _pred_band(self, X: np.ndarray, level: float | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Prediction interval for new runs: each bootstrap fit's prediction times a resampled residual
        (inflated by sqrt(n / (n - p)) for the degrees of freedom the fit used)."""
        level = self.level if level is None else level
        if len(self._boot) < 2 or len(self._resid) == 0:
            nan = np.full(len(X), np.nan)
            return nan, nan
        n, p = len(self._resid), self.form.n_params
        resid = (self._resid - self._resid.mean()) * math.sqrt(n / max(1, n - p))
        rng = np.random.default_rng(seed)
        preds = self._predict_matrix(X, self._boot) * np.exp(rng.choice(resid, size=(len(self._boot), len(X))))
        lo, hi = np.percentile(preds, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return lo, hi

    def _describe(self) -> str:
        p = self.params
        if self.form.is_constant:
            return f"L = {p['E']:.4g}"
        v, c, e = self.names.variables, self.names.coefs, self.names.exponents
        if self.form.loglinear:
            return f"L = {p['C']:.4g} · " + " · ".join(f"{v[j]}^-{p[e[j]]:.3g}" for j in self.form.terms)
        parts = ([f"{p['E']:.4g}"] if self.form.has_e else [])
        parts += [f"{p[c[j]]:.4g}·{v[j]}^-{p[e[j]]:.3g}" for j in self.form.terms]
        return "L = " + " + ".join(parts)

    def describe(self) -> str:
        return self._describe()


def _natural(form: Form, theta: np.ndarray, refs: Sequence[float], names: _Names) -> dict[str, np.ndarray]:
    """Internal (..., k) parameters -> named parameters in the caller's units."""
    y_ref = refs[-1]
    m = len(form.terms)
    out: dict[str, np.ndarray] = {}
    with np.errstate(over="ignore"):
        if form.is_constant:
            out["E"] = y_ref * np.exp(theta[..., 0])
        elif form.loglinear:
            lc = theta[..., 0] + sum(theta[..., 1 + i] * math.log(refs[j]) for i, j in enumerate(form.terms))
            out["C"] = y_ref * np.exp(lc)
            for i, j in enumerate(form.terms):
                out[names.exponents[j]] = theta[..., 1 + i]
        else:
            off = m + int(form.has_e)
            if form.has_e:
                out["E"] = y_ref * np.exp(theta[..., m])
            for i, j in enumerate(form.terms):
                out[names.coefs[j]] = y_ref * np.exp(theta[..., i] + theta[..., off + i] * math.log(refs[j]))
            for i, j in enumerate(form.terms):
                out[names.exponents[j]] = theta[..., off + i]
    return out


def _internal_names(form: Form, names: _Names) -> list[str]:
    """A name per internal parameter position, for diagnostics: coefficients, then exponents."""
    if form.loglinear or form.is_constant:
        return ["C"] + [names.exponents[j] for j in form.terms]
    return [names.coefs[j] for j in form.terms] + [names.exponents[j] for j in form.terms]


def _resample_ok(X: np.ndarray, form: Form) -> Callable[[np.ndarray], bool]:
    need = 3 if (len(form.terms) == 1 and form.has_e and not form.loglinear) else 2

    def ok(idx: np.ndarray) -> bool:
        if any(len(np.unique(X[idx, j])) < need for j in form.terms):
            return False
        return len(np.unique(X[idx], axis=0)) >= min(form.n_params, len(np.unique(X, axis=0)))

    return ok


def fit_form(form: Form, X: Any, y: Any, n_boot: int = 200, seed: int = 0, names: _Names | None = None,
             cls: type[FormFit] = FormFit, **extra: Any) -> FormFit:
    """Fit one form to X (n, m) > 0 and y (n,) > 0, with bootstrap intervals and diagnostics."""
    _check_boot(n_boot)
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    names = names or (NAMES_1D if X.shape[1] == 1 else NAMES_2D)
    refs = tuple(_geomean(X[:, j]) for j in range(X.shape[1])) + (_geomean(y),)
    logs = [np.log(X[:, j] / refs[j]) for j in form.terms]
    ly = np.log(y / refs[-1])
    n = len(y)
    with _one_blas_thread():
        theta, f = _minimize(form, _starts(form, logs, ly, HUBER_DELTA), logs, ly, HUBER_DELTA)
        rng = np.random.default_rng(seed)
        ok = _resample_ok(X, form)
        boot: list[np.ndarray] = []
        tries = 0
        while len(boot) < n_boot and tries < 20 * n_boot:
            tries += 1
            idx = rng.integers(0, n, size=n)
            if not ok(idx):
                continue  # a resample that cannot identify the parameters; draw again
            b_theta, _ = _minimize(form, [theta], [lg[idx] for lg in logs], ly[idx], HUBER_DELTA, REFIT_OPTIONS)
            boot.append(b_theta)
    boot_arr = np.asarray(boot, dtype=float).reshape(len(boot), len(theta))
    best = {k: float(v) for k, v in _natural(form, theta, refs, names).items()}
    boots = _natural(form, boot_arr, refs, names) if len(boot_arr) else {k: np.zeros(0) for k in best}
    ci = {k: _percentiles(np.asarray(boots[k])) for k in best}
    diag = _diagnose(form, theta, boot_arr, logs, ly, best, ci, _internal_names(form, names), n_boot)
    resid = ly - _log_predict(form, theta, logs, len(ly))
    return cls(form=form, params=best, ci=ci, n_points=n, loss=f * HUBER_DELTA / n, n_boot=len(boot_arr),
               diagnostics=diag, names=names, _refs=refs, _theta=theta, _boot=boot_arr, _resid=resid,
               x_range=tuple((float(X[:, j].min()), float(X[:, j].max())) for j in range(X.shape[1])), **extra)


# ---------------------------------------------------------------------------------------------
# L = E + A * x**-alpha (and its reduced forms)


@dataclass
class PowerLawFit(FormFit):
    """``L(x) = E + A * x**-alpha`` or a reduced form; ``ci`` holds percentile bootstrap intervals."""

    @property
    def E(self) -> float:
        return self.params.get("E", 0.0)

    @property
    def A(self) -> float:
        return self.params.get("A", self.params.get("C", 0.0))

    @property
    def alpha(self) -> float:
        return self.params.get("alpha", float("nan"))

    def predict(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return self._predict_matrix(x.reshape(-1, 1)).reshape(x.shape)

    def predict_interval(self, x: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile band of the bootstrap fits' predictions (NaN without bootstrap)."""
        return self._band(np.asarray(x, dtype=float).reshape(-1, 1), level)

    def prediction_interval(self, x: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Where a new run at x should land: the band plus the residual scatter."""
        return self._pred_band(np.asarray(x, dtype=float).reshape(-1, 1), level)

    def describe(self) -> str:
        return self._describe().replace("·x", " * x")


def fit_power_law(x: Any, y: Any, n_boot: int = 200, seed: int = 0, form: Form = FORMS_1D[0]) -> PowerLawFit:
    """Fit ``y = E + A * x**-alpha`` (x, y > 0), or a reduced ``form``. Raises ValueError on degenerate input."""
    _check_boot(n_boot)
    x, y = _check({"x": x, "y": y}, 3, "the power law E + A*x^-alpha")
    if len(np.unique(x)) < 3:
        raise ValueError(f"the power law needs at least 3 distinct x values (got {len(np.unique(x))})")
    fit = fit_form(form, x[:, None], y, n_boot=n_boot, seed=seed, names=NAMES_1D, cls=PowerLawFit)
    assert isinstance(fit, PowerLawFit)
    return fit


# ---------------------------------------------------------------------------------------------
# L = E + A / N**alpha + B / D**beta (and its reduced forms)


@dataclass
class ChinchillaFit(FormFit):
    """``L(N, D) = E + A / N**alpha + B / D**beta`` (or a reduced form) with N = parameters, D = samples.

    ``compute_optimal(C)`` minimises L under ``C = c * N * D`` with ``c = flops_per_param_sample``
    (6 for the language-model rule; ``flops_per_image / n_params`` to count real image FLOPs). It is
    defined only for forms with a power term in both N and D (full, E = 0)."""

    flops_per_param_sample: float = 6.0

    @property
    def E(self) -> float:
        return self.params.get("E", 0.0)

    @property
    def A(self) -> float:
        return self.params.get("A", 0.0)

    @property
    def B(self) -> float:
        return self.params.get("B", 0.0)

    @property
    def alpha(self) -> float:
        return self.params.get("alpha", float("nan"))

    @property
    def beta(self) -> float:
        return self.params.get("beta", float("nan"))

    @property
    def has_frontier(self) -> bool:
        return self.form.terms == (0, 1) and not self.form.loglinear

    def _nd(self, N: Any, D: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        N, D = np.broadcast_arrays(np.asarray(N, dtype=float), np.asarray(D, dtype=float))
        return np.column_stack([N.ravel(), D.ravel()]), N.shape

    def predict(self, N: Any, D: Any) -> np.ndarray:
        X, shape = self._nd(N, D)
        return self._predict_matrix(X).reshape(shape)

    def predict_interval(self, N: Any, D: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        X, shape = self._nd(N, D)
        lo, hi = self._band(X, level)
        return lo.reshape(shape), hi.reshape(shape)

    def prediction_interval(self, N: Any, D: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        X, shape = self._nd(N, D)
        lo, hi = self._pred_band(X, level)
        return lo.reshape(shape), hi.reshape(shape)

    # -- compute-optimal allocation ----------------------------------------------------------

    @property
    def exponents(self) -> tuple[float, float]:
        """(a, b) with N_opt ∝ C**a and D_opt ∝ C**b: a = beta/(alpha+beta), b = alpha/(alpha+beta)."""
        if not self.has_frontier:
            return (float("nan"), float("nan"))
        s = self.alpha + self.beta
        return (self.beta / s, self.alpha / s) if s > 0 else (float("nan"), float("nan"))

    @property
    def exponents_ci(self) -> dict[str, tuple[float, float]]:
        if len(self._boot) < 2 or not self.has_frontier:
            return {"a": (float("nan"),) * 2, "b": (float("nan"),) * 2}
        off = 2 + int(self.form.has_e)
        alpha, beta = self._boot[:, off], self._boot[:, off + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"a": _percentiles(beta / (alpha + beta)), "b": _percentiles(alpha / (alpha + beta))}

    def compute_optimal(self, C: Any, flops_per_param_sample: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """N_opt(C), D_opt(C) minimising L(N, D) subject to C = c * N * D (closed form)."""
        c = self.flops_per_param_sample if flops_per_param_sample is None else flops_per_param_sample
        C = np.asarray(C, dtype=float)
        alpha, beta = self.alpha, self.beta
        if not self.has_frontier or not (alpha > 0 and beta > 0):
            nan = np.full(C.shape, np.nan)
            return nan, nan
        # log G = log(alpha A / (beta B)) / (alpha + beta), in logs so huge A, B cannot overflow.
        a_coef, b_coef = self._theta[0], self._theta[1]
        n_ref, d_ref = self._refs[0], self._refs[1]
        log_a = a_coef + alpha * np.log(n_ref)
        log_b = b_coef + beta * np.log(d_ref)
        log_g = (np.log(alpha) + log_a - np.log(beta) - log_b) / (alpha + beta)
        log_nd = np.log(C / c)
        log_n = log_g + beta / (alpha + beta) * log_nd
        return np.exp(log_n), np.exp(log_nd - log_n)

    def frontier(self, C: Any, flops_per_param_sample: float | None = None) -> dict[str, np.ndarray]:
        """Compute-optimal frontier: C, N_opt, D_opt and the predicted loss there."""
        C = np.asarray(C, dtype=float)
        n_opt, d_opt = self.compute_optimal(C, flops_per_param_sample)
        return {"C": C, "N": n_opt, "D": d_opt, "L": self.predict(n_opt, d_opt)}

    def isoflop(self, C: float, N: Any, flops_per_param_sample: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Along the iso-FLOP line C = c * N * D: returns (D, L) for the given N."""
        c = self.flops_per_param_sample if flops_per_param_sample is None else flops_per_param_sample
        N = np.asarray(N, dtype=float)
        D = C / (c * N)
        return D, self.predict(N, D)

    def isoflop_profile(self, C: float, span: float = 1.5, n: int = 61,
                        flops_per_param_sample: float | None = None) -> dict[str, np.ndarray]:
        """The iso-FLOP curve of budget C for N within 10**±span of N_opt(C): N, D, L."""
        n_opt, _ = self.compute_optimal(C, flops_per_param_sample)
        centre = float(n_opt) if np.isfinite(n_opt) else self._refs[0]
        N = centre * np.logspace(-span, span, n)
        D, L = self.isoflop(C, N, flops_per_param_sample)
        return {"N": N, "D": D, "L": L}

    def describe(self) -> str:
        return self._describe().replace("·N^-", " / N^").replace("·D^-", " / D^")


def _check_chinchilla(N: Any, D: Any, L: Any, n_min: int = 5) -> list[np.ndarray]:
    N, D, L = _check({"N": N, "D": D, "L": L}, n_min, "the Chinchilla law E + A/N^alpha + B/D^beta")
    for name, arr in (("N", N), ("D", D)):
        if len(np.unique(arr)) < 2:
            raise ValueError(f"the Chinchilla law needs at least 2 distinct {name} values (got 1): "
                             f"vary both parameters and samples")
    pairs = np.unique(np.stack([N, D], axis=1), axis=0)
    if len(pairs) < n_min:
        raise ValueError(f"the Chinchilla law has 5 parameters but only {len(pairs)} distinct (N, D) pairs were given")
    return [N, D, L]


def fit_chinchilla(N: Any, D: Any, L: Any, n_boot: int = 200, seed: int = 0,
                   flops_per_param_sample: float = 6.0, form: Form = FORMS_2D[0]) -> ChinchillaFit:
    """Fit ``L = E + A / N**alpha + B / D**beta`` (N, D, L > 0), or a reduced ``form``.
    Raises ValueError on degenerate input."""
    _check_boot(n_boot)
    N, D, L = _check_chinchilla(N, D, L)
    if not np.isfinite(flops_per_param_sample) or flops_per_param_sample <= 0:
        raise ValueError(f"flops_per_param_sample={flops_per_param_sample!r} must be > 0")
    fit = fit_form(form, np.column_stack([N, D]), L, n_boot=n_boot, seed=seed, names=NAMES_2D, cls=ChinchillaFit,
                   flops_per_param_sample=float(flops_per_param_sample))
    assert isinstance(fit, ChinchillaFit)
    return fit


# ---------------------------------------------------------------------------------------------
# Model comparison by cross-validated error


@dataclass
class FormScore:
    form: Form
    cv_rmse: float  # RMSE of held-out log errors (NaN: not evaluated)
    cv_se: float  # standard error of the mean squared held-out log error
    note: str = ""

    @property
    def cv_mse(self) -> float:
        return self.cv_rmse**2


@dataclass
class Comparison:
    """Every candidate form's cross-validated error, the chosen fit, and why."""

    scores: list[FormScore]
    chosen: FormFit | None
    reason: str
    method: str  # "leave-one-out" or "10-fold"

    @property
    def law(self) -> FormFit | None:
        """The chosen fit when it is an identifiable law, else None."""
        if self.chosen is None or self.chosen.form.is_constant or not self.chosen.identifiable:
            return None
        return self.chosen


def _folds(n: int, seed: int) -> tuple[list[np.ndarray], str]:
    if n <= LOO_MAX_POINTS:
        return [np.array([i]) for i in range(n)], "leave-one-out"
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, K_FOLDS)], f"{K_FOLDS}-fold"


def _cv(form: Form, X: np.ndarray, y: np.ndarray, folds: list[np.ndarray]) -> FormScore:
    n = len(y)
    if n - max(len(f) for f in folds) < form.n_params:
        return FormScore(form, float("nan"), float("nan"), f"too few points for {form.n_params} parameters")
    refs = tuple(_geomean(X[:, j]) for j in range(X.shape[1])) + (_geomean(y),)
    logs_all = [np.log(X[:, j] / refs[j]) for j in form.terms]
    ly_all = np.log(y / refs[-1])
    errs = np.full(n, np.nan)
    with _one_blas_thread():
        full_theta, _ = _minimize(form, _starts(form, logs_all, ly_all, HUBER_DELTA), logs_all, ly_all, HUBER_DELTA)
        for test in folds:
            train = np.setdiff1d(np.arange(n), test)
            lt = [lg[train] for lg in logs_all]
            theta, _ = _minimize(form, [full_theta], lt, ly_all[train], HUBER_DELTA, REFIT_OPTIONS)  # warm start
            errs[test] = _log_predict(form, theta, [lg[test] for lg in logs_all], len(test)) - ly_all[test]
    sq = errs**2
    return FormScore(form, float(np.sqrt(sq.mean())), float(sq.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"))


def compare_forms(X: Any, y: Any, forms: Sequence[Form], n_boot: int = 200, seed: int = 0,
                  names: _Names | None = None, cls: type[FormFit] = FormFit, **extra: Any) -> Comparison:
    """Score every form by cross-validated log error; choose the simplest identifiable form within one
    standard error of the best. The constant form winning means there is no law."""
    X = np.asarray(X, dtype=float)
    X = X[:, None] if X.ndim == 1 else X
    y = np.asarray(y, dtype=float)
    folds, method = _folds(len(y), seed)
    scores = [_cv(f, X, y, folds) for f in forms]
    scored = [s for s in scores if math.isfinite(s.cv_rmse)]
    if not scored:
        return Comparison(scores, None, "no form could be cross-validated (too few points)", method)
    best = min(scored, key=lambda s: s.cv_mse)
    tol = best.cv_mse + (best.cv_se if math.isfinite(best.cv_se) else 0.0)
    candidates = sorted((s for s in scored if s.cv_mse <= tol), key=lambda s: (s.form.n_params, s.cv_mse))
    rule = (f"simplest form within one standard error of the best {method} error "
            f"({best.form.name}: RMSE {best.cv_rmse:.3g} in log L)")
    if candidates[0].form.is_constant:
        chosen = fit_form(candidates[0].form, X, y, n_boot=0, seed=seed, names=names, cls=cls, **extra)
        return Comparison(scores, chosen, f"no law: a constant predicts held-out points as well as any scaling form "
                                          f"({method} RMSE {candidates[0].cv_rmse:.3g} vs best {best.cv_rmse:.3g} "
                                          f"in log L), so the loss does not scale with these variables here", method)
    skipped: list[str] = []
    first: FormFit | None = None
    for cand in candidates:
        fit = fit_form(cand.form, X, y, n_boot=n_boot, seed=seed, names=names, cls=cls, **extra)
        first = first or fit
        if fit.identifiable:
            why = rule
            if skipped:
                why += "; simpler candidates not identifiable: " + "; ".join(skipped)
            return Comparison(scores, fit, why, method)
        skipped.append(f"{cand.form.name} ({fit.diagnostics.summary()})")
    return Comparison(scores, first, "no law: no form within one standard error of the best is identifiable: "
                      + "; ".join(skipped), method)


# ---------------------------------------------------------------------------------------------
# Held-out prediction


@dataclass
class HeldOut:
    """The chosen form refitted without the held-out runs, and how it predicts them."""

    what: str  # e.g. "the largest budget (D = 32000)"
    fit: FormFit
    X: np.ndarray  # held-out inputs (n, m)
    actual: np.ndarray
    predicted: np.ndarray
    lo: np.ndarray  # prediction interval
    hi: np.ndarray

    @property
    def rel_error(self) -> np.ndarray:
        return self.predicted / self.actual - 1.0

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.mean(np.abs(self.rel_error)))

    @property
    def inside(self) -> np.ndarray:
        """Whether each held-out run is inside the 95% prediction interval (False without one)."""
        return (self.actual >= self.lo) & (self.actual <= self.hi)

    @property
    def has_interval(self) -> bool:
        return bool(np.all(np.isfinite(self.lo)) and np.all(np.isfinite(self.hi)))


def held_out(form: Form, X: Any, y: Any, holdout: np.ndarray, what: str, n_boot: int = 200, seed: int = 0,
             names: _Names | None = None, cls: type[FormFit] = FormFit, **extra: Any) -> HeldOut | str:
    """Fit ``form`` on the rows not in ``holdout`` and predict those rows. Returns a reason string when
    the remaining rows cannot support the form."""
    X = np.asarray(X, dtype=float)
    X = X[:, None] if X.ndim == 1 else X
    y = np.asarray(y, dtype=float)
    train = ~holdout
    if not holdout.any() or not train.any():
        return "nothing to hold out"
    Xt = X[train]
    if train.sum() < form.n_params + 1:
        return f"{int(train.sum())} points left after holding out {what}, too few for {form.n_params} parameters"
    need = 3 if (len(form.terms) == 1 and form.has_e and not form.loglinear) else 2
    for j in form.terms:
        if len(np.unique(Xt[:, j])) < need:
            return f"{len(np.unique(Xt[:, j]))} distinct {(names or NAMES_1D).variables[j]} values left after " \
                   f"holding out {what} (the form needs {need})"
    fit = fit_form(form, Xt, y[train], n_boot=n_boot, seed=seed, names=names, cls=cls, **extra)
    Xh = X[holdout]
    pred = fit._predict_matrix(Xh)
    lo, hi = fit._pred_band(Xh, None, seed)
    return HeldOut(what=what, fit=fit, X=Xh, actual=y[holdout], predicted=pred, lo=lo, hi=hi)


# ---------------------------------------------------------------------------------------------
# Everything about one data set: comparison, the law (if any), held-out prediction


@dataclass
class LawAnalysis:
    comparison: Comparison
    held: HeldOut | None
    held_note: str  # why there is no held-out check, when there is none

    @property
    def law(self) -> FormFit | None:
        return self.comparison.law

    @property
    def chosen(self) -> FormFit | None:
        return self.comparison.chosen

    @property
    def verdict(self) -> str:
        if self.law is not None:
            return "law"
        return self.comparison.reason if self.comparison.reason.startswith("no law") else \
            "no law: " + self.comparison.reason


def _with_held_out(comp: Comparison, X: np.ndarray, y: np.ndarray, holdout: np.ndarray, what: str, n_boot: int,
                   seed: int, names: _Names, cls: type[FormFit], **extra: Any) -> LawAnalysis:
    if comp.law is None:
        return LawAnalysis(comp, None, "no law to test")
    res = held_out(comp.law.form, X, y, holdout, what, n_boot=n_boot, seed=seed, names=names, cls=cls, **extra)
    if isinstance(res, str):
        return LawAnalysis(comp, None, res)
    return LawAnalysis(comp, res, "")


def analyze_power_law(x: Any, y: Any, n_boot: int = 200, seed: int = 0, hold_out: str | None = "largest",
                      forms: Sequence[Form] = FORMS_1D, no_hold_out_reason: str = "no held-out check asked for"
                      ) -> LawAnalysis:
    """Compare 1-D forms, keep the chosen one if it is a law, and check it on held-out points:
    ``hold_out="largest"`` holds out the largest x, ``"tail"`` the last 20% of points (at least one),
    None skips the check (``no_hold_out_reason`` says why)."""
    _check_boot(n_boot)
    if hold_out not in ("largest", "tail", None):
        raise ValueError(f"hold_out={hold_out!r} is not allowed (allowed: 'largest', 'tail', None)")
    x, y = _check({"x": x, "y": y}, 3, "the power law E + A*x^-alpha")
    if len(np.unique(x)) < 3:
        raise ValueError(f"the power law needs at least 3 distinct x values (got {len(np.unique(x))})")
    comp = compare_forms(x[:, None], y, forms, n_boot=n_boot, seed=seed, names=NAMES_1D, cls=PowerLawFit)
    if hold_out is None:
        return LawAnalysis(comp, None, no_hold_out_reason if comp.law is not None else "no law to test")
    if hold_out == "largest":
        mask, what = x == x.max(), f"the largest x ({x.max():.4g})"
    elif hold_out == "tail":
        order = np.argsort(x)
        mask = np.zeros(len(x), dtype=bool)
        mask[order[-max(1, len(x) // 5):]] = True
        what = "the last 20% of the curve"
    return _with_held_out(comp, x[:, None], y, mask, what, n_boot, seed, NAMES_1D, PowerLawFit)


def analyze_chinchilla(N: Any, D: Any, L: Any, n_boot: int = 200, seed: int = 0,
                       flops_per_param_sample: float = 6.0, forms: Sequence[Form] = FORMS_2D) -> LawAnalysis:
    """Compare L(N, D) forms, keep the chosen one if it is a law, and predict the largest budget D
    from a fit on the others."""
    _check_boot(n_boot)
    N, D, L = _check_chinchilla(N, D, L, n_min=3)
    if not np.isfinite(flops_per_param_sample) or flops_per_param_sample <= 0:
        raise ValueError(f"flops_per_param_sample={flops_per_param_sample!r} must be > 0")
    X = np.column_stack([N, D])
    extra = {"flops_per_param_sample": float(flops_per_param_sample)}
    comp = compare_forms(X, L, forms, n_boot=n_boot, seed=seed, names=NAMES_2D, cls=ChinchillaFit, **extra)
    mask = D == D.max()
    return _with_held_out(comp, X, L, mask, f"the largest budget (D = {D.max():.4g})", n_boot, seed, NAMES_2D,
                          ChinchillaFit, **extra)
