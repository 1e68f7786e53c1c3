"""One fitted form: the full fit (multi-start Huber), its linearised least-squares intervals and draws,
parameters in the caller's units, prediction bands and diagnostics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..intervals import point_groups
from .diagnostics import Diagnostics, diagnose
from .forms import (
    HUBER_DELTA,
    LEVEL,
    NAMES_1D,
    NAMES_2D,
    Form,
    ParamNames,
    check_boot,
    geomean,
    grid_starts,
    log_predict,
    minimize_from_starts,
    one_blas_thread,
)
from .linearised import Linearised, bootstrap_t_band, least_squares_refit, linearise, log_jacobian, parameter_intervals

# Starts of the full fit: the least-squares fit from the best grid point, and the second-best grid point.
# Measured against the five best grid points on 120 simulated studies (1-D and 2-D): never a worse optimum,
# 1.5 to 3x faster.
FIT_STARTS = 2


@dataclass
class FormFit:
    """A fitted form: parameters in the caller's units (the Huber fit), 95% intervals and ``draws`` of the
    internal parameters from the linearised least-squares fit (``linearised``), diagnostics."""

    form: Form
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    n_points: int
    loss: float  # mean Huber loss on the points
    n_boot: int
    diagnostics: Diagnostics
    names: ParamNames = NAMES_1D
    level: float = LEVEL
    refs: tuple[float, ...] = field(default=(1.0, 1.0), repr=False)  # one per variable, then L
    theta: np.ndarray = field(default_factory=lambda: np.zeros(1), repr=False, compare=False)
    draws: np.ndarray = field(default_factory=lambda: np.zeros((0, 1)), repr=False, compare=False)
    _resid: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    x_range: tuple[tuple[float, float], ...] = ()  # (min, max) of each variable over the fitted points
    _linearised: Linearised | None = field(default=None, repr=False, compare=False)

    @property
    def identifiable(self) -> bool:
        return self.diagnostics.identifiable

    @property
    def formula(self) -> str:
        return self.form.formula(self.names.variables, self.names.coefs, self.names.exponents)

    def _logs(self, X: np.ndarray) -> list[np.ndarray]:
        return [np.log(X[:, j] / self.refs[j]) for j in self.form.terms]

    def predict_matrix(self, X: np.ndarray, theta: np.ndarray | None = None) -> np.ndarray:
        t = self.theta if theta is None else theta
        return self.refs[-1] * np.exp(log_predict(self.form, t, self._logs(X), len(X)))

    def confidence_band(self, X: np.ndarray, level: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Where the law's mean lies at X: the least-squares prediction +- t * its linearised standard error,
        in log L (NaN without an interval)."""
        return self._log_band(X, level, new_run=False)

    def prediction_band(self, X: np.ndarray, level: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Where a new run at X should land: the least-squares prediction +- t_{n-p} * sqrt(se^2 + s^2) in
        log L, s the residual standard deviation of one run (the exact prediction interval of a linear
        model, linearised here; its coverage at a held-out budget is measured in docs/calibration-cpu.md)."""
        return self._log_band(X, level, new_run=True)

    def refitted_prediction_band(self, X_fit: np.ndarray, y_fit: np.ndarray, X: np.ndarray, level: float | None,
                                 n_draws: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Where a new run at X should land, for a fit where the linearised band does not hold (a parameter at
        a bound): ``linearised.bootstrap_t_band`` refitting the runs (X_fit, y_fit) this form was fitted to."""
        level = self.level if level is None else level
        lin = self._linearised
        if lin is None or n_draws == 0:
            nan = np.full(len(X), np.nan)
            return nan, nan
        ly = np.log(np.asarray(y_fit, dtype=float) / self.refs[-1])
        with one_blas_thread():
            lo, hi = bootstrap_t_band(self.form, lin, self._logs(X_fit), ly, self._logs(X), level, n_draws,
                                      np.random.default_rng(seed))
        with np.errstate(over="ignore"):
            return self.refs[-1] * np.exp(lo), self.refs[-1] * np.exp(hi)

    def _log_band(self, X: np.ndarray, level: float | None, new_run: bool) -> tuple[np.ndarray, np.ndarray]:
        level = self.level if level is None else level
        lin = self._linearised
        if lin is None or self.n_boot == 0:
            nan = np.full(len(X), np.nan)
            return nan, nan
        z, J = log_jacobian(self.form, lin.centre, self._logs(X), len(X))
        var = np.sum((J @ lin.cov_factor) ** 2, axis=1) + (lin.scatter**2 if new_run else 0.0)
        half = lin.t_quantile(level) * np.sqrt(var)
        with np.errstate(over="ignore"):
            return self.refs[-1] * np.exp(z - half), self.refs[-1] * np.exp(z + half)

    def term_description(self) -> str:
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
        return self.term_description()


def natural_params(form: Form, theta: np.ndarray, refs: Sequence[float], names: ParamNames) -> dict[str, np.ndarray]:
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


def _internal_names(form: Form, names: ParamNames) -> list[str]:
    """A name per internal parameter position, for diagnostics: coefficients, then exponents."""
    if form.loglinear or form.is_constant:
        return ["C"] + [names.exponents[j] for j in form.terms]
    return [names.coefs[j] for j in form.terms] + [names.exponents[j] for j in form.terms]


def fit_form(form: Form, X: Any, y: Any, n_boot: int = 200, seed: int = 0, names: ParamNames | None = None,
             cls: type[FormFit] = FormFit, **extra: Any) -> FormFit:
    """Fit one form to X (n, m) > 0 and y (n,) > 0 (Huber in log L, from the best grid starts), with 95%
    intervals from the linearised least-squares fit (``linearised``), `n_boot` t-calibrated draws of the
    parameters for derived quantities (none, and no intervals, when 0) and diagnostics."""
    check_boot(n_boot)
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    names = names or (NAMES_1D if X.shape[1] == 1 else NAMES_2D)
    refs = tuple(geomean(X[:, j]) for j in range(X.shape[1])) + (geomean(y),)
    logs = [np.log(X[:, j] / refs[j]) for j in form.terms]
    ly = np.log(y / refs[-1])
    n = len(y)
    with one_blas_thread():
        starts = grid_starts(form, logs, ly, HUBER_DELTA, n=FIT_STARTS)
        if not (form.loglinear or form.is_constant):  # the least-squares fit is the Huber fit's best start
            starts = [least_squares_refit(form, starts[0], logs, ly), *starts[1:]]
        theta, f = minimize_from_starts(form, starts, logs, ly, HUBER_DELTA)
        lin = linearise(form, theta, logs, ly) if n_boot else None
    best = {k: float(v) for k, v in natural_params(form, theta, refs, names).items()}
    if lin is None:
        draws = np.zeros((0, len(theta)))
        ci = {k: (float("nan"), float("nan")) for k in best}
    else:
        draws = lin.draws(n_boot, np.random.default_rng(seed))
        ci = parameter_intervals(lin, form, refs, names, best, LEVEL)
    groups = point_groups(X)
    diag = diagnose(form, theta, draws, logs, ly, best, ci, _internal_names(form, names),
                    n_boot, n_design_points=int(groups.max()) + 1 if n else 0)
    resid = ly - log_predict(form, theta, logs, len(ly))
    return cls(form=form, params=best, ci=ci, n_points=n, loss=f * HUBER_DELTA / n, n_boot=len(draws),
               diagnostics=diag, names=names, refs=refs, theta=theta, draws=draws, _resid=resid,
               _linearised=lin,
               x_range=tuple((float(X[:, j].min()), float(X[:, j].max())) for j in range(X.shape[1])), **extra)
