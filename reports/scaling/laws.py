"""The two laws the reports fit: L(x) = E + A * x**-alpha and L(N, D) = E + A / N**alpha + B / D**beta,
with the compute-optimal allocation of the latter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .compute import AffineCompute, allocation_bands, local_exponents, optimal_allocation
from .fit import FormFit, fit_form, natural_params
from .forms import FORMS_1D, FORMS_2D, NAMES_1D, NAMES_2D, Form, check_arrays, check_boot, percentile_ci


@dataclass
class PowerLawFit(FormFit):
    """``L(x) = E + A * x**-alpha`` or a reduced form; ``ci`` holds linearised least-squares t-intervals."""

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
        return self.predict_matrix(x.reshape(-1, 1)).reshape(x.shape)

    def predict_interval(self, x: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise 95% interval of the law's mean at x (NaN without intervals)."""
        return self.confidence_band(np.asarray(x, dtype=float).reshape(-1, 1), level)

    def prediction_interval(self, x: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Where a new run at x should land: the band plus the residual scatter."""
        return self.prediction_band(np.asarray(x, dtype=float).reshape(-1, 1), level)

    def describe(self) -> str:
        return self.term_description().replace("·x", " * x")


def fit_power_law(x: Any, y: Any, n_boot: int = 200, seed: int = 0, form: Form = FORMS_1D[0]) -> PowerLawFit:
    """Fit ``y = E + A * x**-alpha`` (x, y > 0), or a reduced ``form``. Raises ValueError on degenerate input."""
    check_boot(n_boot)
    x, y = check_arrays({"x": x, "y": y}, 3, "the power law E + A*x^-alpha")
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

    ``compute_optimal(C)`` minimises L under ``C = c * N**g * D``: training FLOPs are FLOPs per sample
    (``c * N**g``) times samples. ``c = flops_per_param_sample``, ``g = flops_exponent``: 6 and 1 for the
    language-model rule; for a study pass the fit of its trials' own FLOPs per image against N (when N
    counts the scaled part only, e.g. the encoder, FLOPs do not grow in proportion to it). It is defined
    only for forms with a power term in both N and D (full, E = 0)."""

    flops_per_param_sample: float = 6.0
    flops_exponent: float = 1.0
    compute: AffineCompute | None = None  # a study's own affine FLOPs: the frontier is then solved numerically
    reference_compute: float | None = None  # where local exponents are read (the study's largest compute)

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
        return self.predict_matrix(X).reshape(shape)

    def predict_interval(self, N: Any, D: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        X, shape = self._nd(N, D)
        lo, hi = self.confidence_band(X, level)
        return lo.reshape(shape), hi.reshape(shape)

    def prediction_interval(self, N: Any, D: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        X, shape = self._nd(N, D)
        lo, hi = self.prediction_band(X, level)
        return lo.reshape(shape), hi.reshape(shape)

    # -- compute-optimal allocation ----------------------------------------------------------

    def boot_params(self) -> dict[str, np.ndarray]:
        """The t-calibrated draws of the named parameters (``linearised``), in the caller's units."""
        return natural_params(self.form, self.draws, self.refs, self.names)

    def _frontier_params(self) -> dict[str, float]:
        return {"A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}

    @property
    def exponents(self) -> tuple[float, float]:
        """(a, b) with N_opt ∝ C**a and D_opt ∝ C**b: a = beta/(alpha+g*beta), b = alpha/(alpha+g*beta)
        (g = flops_exponent; 1 gives the familiar beta/(alpha+beta), alpha/(alpha+beta)). Under an affine
        ``compute`` they are local, read at ``reference_compute``."""
        if not self.has_frontier:
            return (float("nan"), float("nan"))
        if self.compute is not None and self.reference_compute:
            a, b = local_exponents(self._frontier_params(), self.compute, self.reference_compute)
            return float(a), float(b)
        s = self.alpha + self.flops_exponent * self.beta
        return (self.beta / s, self.alpha / s) if s > 0 else (float("nan"), float("nan"))

    @property
    def exponents_ci(self) -> dict[str, tuple[float, float]]:
        if len(self.draws) < 2 or not self.has_frontier:
            return {"a": (float("nan"),) * 2, "b": (float("nan"),) * 2}
        if self.compute is not None and self.reference_compute:
            a, b = local_exponents(self.boot_params(), self.compute, self.reference_compute)
            return {"a": percentile_ci(np.asarray(a)), "b": percentile_ci(np.asarray(b))}
        off = 2 + int(self.form.has_e)
        alpha, beta = self.draws[:, off], self.draws[:, off + 1]
        s = alpha + self.flops_exponent * beta
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"a": percentile_ci(beta / s), "b": percentile_ci(alpha / s)}

    def allocation(self, C: float, level: float = 0.95) -> dict[str, tuple[float, float, float]]:
        """At compute C (the affine ``compute`` required): N_opt, D_opt, D/N, a and b as (value, lo, hi),
        the band over the parameter draws."""
        if self.compute is None or not self.has_frontier:
            raise ValueError("allocation: needs a law with both power terms and an affine compute model")
        return allocation_bands(self._frontier_params(), self.boot_params(), self.compute, C, level)

    def compute_optimal(self, C: Any, flops_per_param_sample: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """N_opt(C), D_opt(C) minimising L(N, D) subject to C = c * N**g * D (closed form), or to
        C = D * (fixed + per_param * N) under an affine ``compute`` (solved numerically)."""
        c = self.flops_per_param_sample if flops_per_param_sample is None else flops_per_param_sample
        C = np.asarray(C, dtype=float)
        alpha, beta = self.alpha, self.beta
        if not self.has_frontier or not (alpha > 0 and beta > 0):
            nan = np.full(C.shape, np.nan)
            return nan, nan
        if self.compute is not None:
            return optimal_allocation(self._frontier_params(), self.compute, C)
        # dL/dN = 0 along D = C / (c N^g):  N^(alpha + g beta) = alpha A (C / c)^beta / (g beta B); in logs
        # so huge A, B cannot overflow.
        g = self.flops_exponent
        a_coef, b_coef = self.theta[0], self.theta[1]
        n_ref, d_ref = self.refs[0], self.refs[1]
        log_a = a_coef + alpha * np.log(n_ref)
        log_b = b_coef + beta * np.log(d_ref)
        log_cc = np.log(C / c)
        log_n = (np.log(alpha) + log_a - np.log(g * beta) - log_b + beta * log_cc) / (alpha + g * beta)
        return np.exp(log_n), np.exp(log_cc - g * log_n)

    def frontier(self, C: Any, flops_per_param_sample: float | None = None) -> dict[str, np.ndarray]:
        """Compute-optimal frontier: C, N_opt, D_opt and the predicted loss there."""
        C = np.asarray(C, dtype=float)
        n_opt, d_opt = self.compute_optimal(C, flops_per_param_sample)
        return {"C": C, "N": n_opt, "D": d_opt, "L": self.predict(n_opt, d_opt)}

    def isoflop(self, C: float, N: Any, flops_per_param_sample: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Along the iso-FLOP line C = c * N**g * D: returns (D, L) for the given N."""
        c = self.flops_per_param_sample if flops_per_param_sample is None else flops_per_param_sample
        N = np.asarray(N, dtype=float)
        D = C / self.compute.per_image(N) if self.compute is not None else C / (c * N**self.flops_exponent)
        return D, self.predict(N, D)

    def isoflop_profile(self, C: float, span: float = 1.5, n: int = 61,
                        flops_per_param_sample: float | None = None) -> dict[str, np.ndarray]:
        """The iso-FLOP curve of budget C for N within 10**±span of N_opt(C): N, D, L."""
        n_opt, _ = self.compute_optimal(C, flops_per_param_sample)
        centre = float(n_opt) if np.isfinite(n_opt) else self.refs[0]
        N = centre * np.logspace(-span, span, n)
        D, L = self.isoflop(C, N, flops_per_param_sample)
        return {"N": N, "D": D, "L": L}

    def describe(self) -> str:
        return self.term_description().replace("·N^-", " / N^").replace("·D^-", " / D^")


def check_chinchilla(N: Any, D: Any, L: Any, n_min: int = 5) -> list[np.ndarray]:
    N, D, L = check_arrays({"N": N, "D": D, "L": L}, n_min, "the Chinchilla law E + A/N^alpha + B/D^beta")
    for name, arr in (("N", N), ("D", D)):
        if len(np.unique(arr)) < 2:
            raise ValueError(f"the Chinchilla law needs at least 2 distinct {name} values (got 1): "
                             f"vary both parameters and samples")
    pairs = np.unique(np.stack([N, D], axis=1), axis=0)
    if len(pairs) < n_min:
        raise ValueError(f"the Chinchilla law has 5 parameters but only {len(pairs)} distinct (N, D) pairs were given")
    return [N, D, L]


def check_flops(flops_per_param_sample: float, flops_exponent: float) -> None:
    if not np.isfinite(flops_per_param_sample) or flops_per_param_sample <= 0:
        raise ValueError(f"flops_per_param_sample={flops_per_param_sample!r} must be > 0")
    if not np.isfinite(flops_exponent) or flops_exponent <= 0:
        raise ValueError(f"flops_exponent={flops_exponent!r} must be > 0")


def flops_model(N: Any, flops_per_sample: Any) -> tuple[float, float]:
    """(c, g) with flops_per_sample ≈ c * N**g, fitted by least squares in logs over the trials: the
    compute model of ``ChinchillaFit`` in the units N is counted in. One distinct N gives g = 1."""
    n = np.asarray(N, dtype=float)
    f = np.asarray(flops_per_sample, dtype=float)
    if len(np.unique(n)) < 2:
        return float(np.median(f / n)), 1.0
    g, lc = np.polyfit(np.log(n), np.log(f), 1)
    return float(np.exp(lc)), float(g)


def fit_chinchilla(N: Any, D: Any, L: Any, n_boot: int = 200, seed: int = 0,
                   flops_per_param_sample: float = 6.0, form: Form = FORMS_2D[0],
                   flops_exponent: float = 1.0, compute: AffineCompute | None = None,
                   reference_compute: float | None = None) -> ChinchillaFit:
    """Fit ``L = E + A / N**alpha + B / D**beta`` (N, D, L > 0), or a reduced ``form``.
    Raises ValueError on degenerate input."""
    check_boot(n_boot)
    N, D, L = check_chinchilla(N, D, L)
    check_flops(flops_per_param_sample, flops_exponent)
    fit = fit_form(form, np.column_stack([N, D]), L, n_boot=n_boot, seed=seed, names=NAMES_2D, cls=ChinchillaFit,
                   flops_per_param_sample=float(flops_per_param_sample), flops_exponent=float(flops_exponent),
                   compute=compute, reference_compute=reference_compute)
    assert isinstance(fit, ChinchillaFit)
    return fit
