"""One fitted form: the full fit, bootstrap refits (multi-start), parameters in the caller's units,
prediction bands and diagnostics."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..intervals import grouped_resamples, point_groups
from .diagnostics import Diagnostics, _diagnose
from .forms import (
    HUBER_DELTA,
    LEVEL,
    NAMES_1D,
    NAMES_2D,
    REFIT_OPTIONS,
    Form,
    _check_boot,
    _geomean,
    _log_predict,
    _minimize,
    _Names,
    _one_blas_thread,
    _percentiles,
    _starts,
    refit_starts,
)


@dataclass
class FormFit:
    """A fitted form: parameters in the caller's units, percentile intervals of a cluster bootstrap (the
    replicates of one design point resampled together), diagnostics."""

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
        """Prediction interval for a new run: each bootstrap fit's prediction times a new run's scatter,
        drawn as s * t_{n-p} in log L (s: the residual standard deviation on n - p degrees of freedom). A
        resampled residual cannot reach beyond the few residuals a small fit has (6 points: never past
        the largest), so its interval was too narrow; the t draw carries the uncertainty of s."""
        level = self.level if level is None else level
        if len(self._boot) < 2 or len(self._resid) == 0:
            nan = np.full(len(X), np.nan)
            return nan, nan
        n, p = len(self._resid), self.form.n_params
        df = max(1, n - p)
        scatter = math.sqrt(float(np.sum((self._resid - self._resid.mean()) ** 2)) / df)
        rng = np.random.default_rng(seed)
        reps = max(len(self._boot), 2000 // max(1, len(self._boot)) * len(self._boot))
        fits = self._predict_matrix(X, self._boot[np.arange(reps) % len(self._boot)])
        preds = fits * np.exp(scatter * rng.standard_t(df, size=(reps, len(X))))
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
        groups = point_groups(X)  # the replicates (seeds) of one design point are resampled together
        boot: list[np.ndarray] = []
        tries = 0
        while len(boot) < n_boot and tries < 20 * n_boot:
            tries += 1
            idx = grouped_resamples(groups, rng)
            if not ok(idx):
                continue  # a resample that cannot identify the parameters; draw again
            b_logs = [lg[idx] for lg in logs]
            b_theta, _ = _minimize(form, refit_starts(form, b_logs, ly[idx], warm=theta), b_logs, ly[idx],
                                   HUBER_DELTA, REFIT_OPTIONS)
            boot.append(b_theta)
    boot_arr = np.asarray(boot, dtype=float).reshape(len(boot), len(theta))
    best = {k: float(v) for k, v in _natural(form, theta, refs, names).items()}
    boots = _natural(form, boot_arr, refs, names) if len(boot_arr) else {k: np.zeros(0) for k in best}
    ci = {k: _percentiles(np.asarray(boots[k])) for k in best}
    diag = _diagnose(form, theta, boot_arr, logs, ly, best, ci, _internal_names(form, names), n_boot,
                     n_design_points=int(groups.max()) + 1 if n else 0)
    resid = ly - _log_predict(form, theta, logs, len(ly))
    return cls(form=form, params=best, ci=ci, n_points=n, loss=f * HUBER_DELTA / n, n_boot=len(boot_arr),
               diagnostics=diag, names=names, _refs=refs, _theta=theta, _boot=boot_arr, _resid=resid,
               x_range=tuple((float(X[:, j].min()), float(X[:, j].max())) for j in range(X.shape[1])), **extra)
