"""Scaling-law fits: a saturating power law and the Chinchilla loss surface.

Both are fitted the Chinchilla "approach 3" way (Hoffmann et al. 2022, Sec. 3.3 and App. D.2): a
Huber loss (delta 1e-3) between ``log L`` and the model's log prediction, computed with log-sum-exp
so no term under- or overflows, minimised with L-BFGS-B from the best points of a grid of starts.
Bootstrap confidence intervals resample the points with replacement, refit (starting from the full
fit), and take the 2.5 / 97.5 percentiles of every parameter.

Internally the inputs are divided by their geometric means, so one grid of starting points suits
losses of any scale and x in any unit (samples seen, parameters, FLOPs); the parameters reported are
in the caller's units.

    L(x)    = E + A * x**-alpha                          fit_power_law(x, y)
    L(N, D) = E + A / N**alpha + B / D**beta             fit_chinchilla(N, D, L)

Compute-optimal allocation uses ``C = c * N * D``; ``c = 6`` is the language-model rule (6 FLOPs per
parameter per token). For images pass ``flops_per_param_sample = flops_per_image / n_params`` (about
``6 * tokens``), so that ``C`` is in real training FLOPs and ``D`` in images.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3
LEVEL = 0.95


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


# ---------------------------------------------------------------------------------------------
# Objective: sum of Huber(log-prediction - log L) / delta, with its gradient, on normalised logs.
# A theta is a vector of log-coefficients followed by exponents; ``logs`` holds log(x / x_ref) per
# input. Term j of the log-sum-exp is  c_j - exponent_j * logs_j ; the last term is the constant e.


def _huber_sum(r: np.ndarray, delta: float) -> np.ndarray:
    # c = min(|r|, delta): c * (|r| - c/2) is r^2/2 inside the band and delta * (|r| - delta/2) outside.
    a = np.abs(r)
    c = np.minimum(a, delta)
    return (c * (a - 0.5 * c)).sum(axis=-1)


def _terms(theta: np.ndarray, logs: Sequence[np.ndarray]) -> np.ndarray:
    """theta (..., 2m+1) = (c_1..c_m, e, p_1..p_m); returns terms (..., m+1, n)."""
    m = len(logs)
    parts = [theta[..., j, None] - theta[..., m + 1 + j, None] * logs[j] for j in range(m)]
    parts.append(np.broadcast_to(theta[..., m, None], parts[0].shape))
    return np.stack(parts, axis=-2)


def _objective(theta: np.ndarray, logs: Sequence[np.ndarray], ly: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Sum of Huber(r) / delta and its gradient for one theta (the optimiser's hot loop: few numpy ops)."""
    m = len(logs)
    terms = [theta[j] - theta[m + 1 + j] * logs[j] for j in range(m)]
    z = terms[0]
    for t in terms[1:]:
        z = np.logaddexp(z, t)
    z = np.logaddexp(z, theta[m])
    r = z - ly
    a = np.abs(r)
    c = np.minimum(a, delta)
    g = np.copysign(c, r) / delta  # d huber / d r, scaled
    grad = np.empty_like(theta)
    for j, t in enumerate(terms):
        gw = g * np.exp(t - z)  # softmax weight of term j = d z / d c_j
        grad[j] = gw.sum()
        grad[m + 1 + j] = -gw.dot(logs[j])
    grad[m] = g.dot(np.exp(theta[m] - z))
    return float(c.dot(a - 0.5 * c)) / delta, grad


def _grid_losses(grid: np.ndarray, logs: Sequence[np.ndarray], ly: np.ndarray, delta: float) -> np.ndarray:
    out = np.empty(len(grid))
    chunk = max(1, 2_000_000 // max(1, len(ly) * (len(logs) + 1)))
    for i in range(0, len(grid), chunk):
        t = _terms(grid[i:i + chunk], logs)  # (g, m+1, n)
        z = np.logaddexp.reduce(t, axis=1)
        out[i:i + chunk] = _huber_sum(z - ly, delta)
    return out


def _grid(m: int) -> np.ndarray:
    coef = np.linspace(-5.0, 1.0, 7 if m > 1 else 13)
    expo = (0.1, 0.25, 0.5, 1.0, 1.5) if m > 1 else (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0)
    rows = [(*c, e, *p) for c in itertools.product(coef, repeat=m) for e in coef
            for p in itertools.product(expo, repeat=m)]
    return np.asarray(rows, dtype=float)


def _bounds(m: int) -> list[tuple[float, float]]:
    return [(-50.0, 50.0)] * (m + 1) + [(0.0, 10.0)] * m


def _minimize(starts: Sequence[np.ndarray], logs: Sequence[np.ndarray], ly: np.ndarray,
              delta: float) -> tuple[np.ndarray, float]:
    best_theta, best_f = None, np.inf
    bounds = _bounds(len(logs))
    for x0 in starts:
        res = minimize(_objective, x0, args=(logs, ly, delta), jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-10})
        if np.all(np.isfinite(res.x)) and res.fun < best_f:
            best_theta, best_f = res.x, float(res.fun)
    assert best_theta is not None
    return best_theta, best_f


@dataclass
class _Fitted:
    theta: np.ndarray
    loss: float  # mean Huber loss on the points
    boot: np.ndarray  # (n_ok, len(theta))


def _fit(logs: list[np.ndarray], ly: np.ndarray, n_boot: int, seed: int, delta: float,
         min_distinct: Callable[[np.ndarray], bool]) -> _Fitted:
    m = len(logs)
    grid = _grid(m)
    order = np.argsort(_grid_losses(grid, logs, ly, delta))
    top = [grid[i] for i in order[:5]]
    theta, f = _minimize(top, logs, ly, delta)
    n = len(ly)
    rng = np.random.default_rng(seed)
    boot: list[np.ndarray] = []
    tries = 0
    while len(boot) < n_boot and tries < 20 * n_boot:
        tries += 1
        idx = rng.integers(0, n, size=n)
        if not min_distinct(idx):
            continue  # a resample that cannot identify the parameters; draw again
        b_theta, _ = _minimize([theta], [lg[idx] for lg in logs], ly[idx], delta)
        boot.append(b_theta)
    boot_arr = np.asarray(boot, dtype=float).reshape(len(boot), len(theta))
    return _Fitted(theta=theta, loss=f * delta / n, boot=boot_arr)


def _percentiles(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return (float(lo), float(hi))


# ---------------------------------------------------------------------------------------------
# L = E + A * x**-alpha


@dataclass
class PowerLawFit:
    """``L(x) = E + A * x**-alpha``; ``ci`` holds percentile bootstrap intervals per parameter."""

    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    n_points: int
    loss: float
    n_boot: int
    level: float = LEVEL
    _x_ref: float = field(default=1.0, repr=False)
    _y_ref: float = field(default=1.0, repr=False)
    _theta: np.ndarray = field(default_factory=lambda: np.zeros(3), repr=False, compare=False)
    _boot: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)), repr=False, compare=False)

    @property
    def E(self) -> float:
        return self.params["E"]

    @property
    def A(self) -> float:
        return self.params["A"]

    @property
    def alpha(self) -> float:
        return self.params["alpha"]

    @staticmethod
    def _eval(theta: np.ndarray, lx: np.ndarray) -> np.ndarray:
        a, e, alpha = theta[..., 0, None], theta[..., 1, None], theta[..., 2, None]
        return np.exp(np.logaddexp(a - alpha * lx, e))

    def predict(self, x: Any) -> np.ndarray:
        lx = np.log(np.asarray(x, dtype=float) / self._x_ref)
        return self._y_ref * self._eval(self._theta, lx.ravel()).reshape(lx.shape)

    def predict_interval(self, x: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise percentile band of the bootstrap fits' predictions (NaN without bootstrap)."""
        level = self.level if level is None else level
        lx = np.log(np.asarray(x, dtype=float) / self._x_ref).ravel()
        if len(self._boot) < 2:
            nan = np.full(lx.shape, np.nan)
            return nan, nan
        preds = self._y_ref * self._eval(self._boot, lx)  # (n_boot, n)
        lo, hi = np.percentile(preds, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return lo, hi

    def describe(self) -> str:
        return f"L = {self.E:.4g} + {self.A:.4g} * x^-{self.alpha:.3g}"


def _distinct(values: np.ndarray, k: int) -> Callable[[np.ndarray], bool]:
    return lambda idx: len(np.unique(values[idx])) >= k


def fit_power_law(x: Any, y: Any, n_boot: int = 200, seed: int = 0) -> PowerLawFit:
    """Fit ``y = E + A * x**-alpha`` (x, y > 0). Raises ValueError on degenerate input."""
    _check_boot(n_boot)
    x, y = _check({"x": x, "y": y}, 3, "the power law E + A*x^-alpha")
    if len(np.unique(x)) < 3:
        raise ValueError(f"the power law needs at least 3 distinct x values (got {len(np.unique(x))})")
    x_ref, y_ref = _geomean(x), _geomean(y)
    lx, ly = np.log(x / x_ref), np.log(y / y_ref)
    with _one_blas_thread():
        fitted = _fit([lx], ly, n_boot, seed, HUBER_DELTA, _distinct(x, 3))

    def natural(theta: np.ndarray) -> np.ndarray:  # (..., 3) -> (..., 3) as E, A, alpha
        a, e, alpha = theta[..., 0], theta[..., 1], theta[..., 2]
        return np.stack([y_ref * np.exp(e), y_ref * np.exp(a + alpha * np.log(x_ref)), alpha], axis=-1)

    names = ("E", "A", "alpha")
    best = natural(fitted.theta)
    boots = natural(fitted.boot) if len(fitted.boot) else np.zeros((0, 3))
    return PowerLawFit(
        params={k: float(v) for k, v in zip(names, best)},
        ci={k: _percentiles(boots[:, i]) for i, k in enumerate(names)},
        n_points=len(x), loss=fitted.loss, n_boot=len(fitted.boot),
        _x_ref=x_ref, _y_ref=y_ref, _theta=fitted.theta, _boot=fitted.boot,
    )


# ---------------------------------------------------------------------------------------------
# L = E + A / N**alpha + B / D**beta


@dataclass
class ChinchillaFit:
    """``L(N, D) = E + A / N**alpha + B / D**beta`` with N = parameters, D = samples seen.

    ``compute_optimal(C)`` minimises L under ``C = c * N * D`` with ``c = flops_per_param_sample``
    (6 for the language-model rule; ``flops_per_image / n_params`` to count real image FLOPs)."""

    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    n_points: int
    loss: float
    n_boot: int
    level: float = LEVEL
    flops_per_param_sample: float = 6.0
    _refs: tuple[float, float, float] = field(default=(1.0, 1.0, 1.0), repr=False)  # N, D, L
    _theta: np.ndarray = field(default_factory=lambda: np.zeros(5), repr=False, compare=False)
    _boot: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)), repr=False, compare=False)

    @property
    def E(self) -> float:
        return self.params["E"]

    @property
    def A(self) -> float:
        return self.params["A"]

    @property
    def B(self) -> float:
        return self.params["B"]

    @property
    def alpha(self) -> float:
        return self.params["alpha"]

    @property
    def beta(self) -> float:
        return self.params["beta"]

    def _logs(self, N: Any, D: Any) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
        N, D = np.broadcast_arrays(np.asarray(N, dtype=float), np.asarray(D, dtype=float))
        n_ref, d_ref, _ = self._refs
        return np.log(N / n_ref).ravel(), np.log(D / d_ref).ravel(), N.shape

    @staticmethod
    def _eval(theta: np.ndarray, ln: np.ndarray, ld: np.ndarray) -> np.ndarray:
        t = _terms(theta, [ln, ld])
        return np.exp(np.logaddexp.reduce(t, axis=-2))

    def predict(self, N: Any, D: Any) -> np.ndarray:
        ln, ld, shape = self._logs(N, D)
        return self._refs[2] * self._eval(self._theta, ln, ld).reshape(shape)

    def predict_interval(self, N: Any, D: Any, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        level = self.level if level is None else level
        ln, ld, shape = self._logs(N, D)
        if len(self._boot) < 2:
            nan = np.full(shape, np.nan)
            return nan, nan
        preds = self._refs[2] * self._eval(self._boot, ln, ld)
        lo, hi = np.percentile(preds, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return lo.reshape(shape), hi.reshape(shape)

    # -- compute-optimal allocation ----------------------------------------------------------

    @property
    def exponents(self) -> tuple[float, float]:
        """(a, b) with N_opt ∝ C**a and D_opt ∝ C**b: a = beta/(alpha+beta), b = alpha/(alpha+beta)."""
        s = self.alpha + self.beta
        return (self.beta / s, self.alpha / s) if s > 0 else (float("nan"), float("nan"))

    @property
    def exponents_ci(self) -> dict[str, tuple[float, float]]:
        if len(self._boot) < 2:
            return {"a": (float("nan"),) * 2, "b": (float("nan"),) * 2}
        alpha, beta = self._boot[:, 3], self._boot[:, 4]
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"a": _percentiles(beta / (alpha + beta)), "b": _percentiles(alpha / (alpha + beta))}

    def compute_optimal(self, C: Any, flops_per_param_sample: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """N_opt(C), D_opt(C) minimising L(N, D) subject to C = c * N * D (closed form)."""
        c = self.flops_per_param_sample if flops_per_param_sample is None else flops_per_param_sample
        C = np.asarray(C, dtype=float)
        alpha, beta = self.alpha, self.beta
        if alpha <= 0 or beta <= 0:
            nan = np.full(C.shape, np.nan)
            return nan, nan
        # log G = log(alpha A / (beta B)) / (alpha + beta), in logs so huge A, B cannot overflow.
        a_coef, b_coef, _, _, _ = self._theta
        n_ref, d_ref, _ = self._refs
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
        return (f"L = {self.E:.4g} + {self.A:.4g} / N^{self.alpha:.3g} + {self.B:.4g} / D^{self.beta:.3g}")


def fit_chinchilla(N: Any, D: Any, L: Any, n_boot: int = 200, seed: int = 0,
                   flops_per_param_sample: float = 6.0) -> ChinchillaFit:
    """Fit ``L = E + A / N**alpha + B / D**beta`` (N, D, L > 0). Raises ValueError on degenerate input."""
    _check_boot(n_boot)
    N, D, L = _check({"N": N, "D": D, "L": L}, 5, "the Chinchilla law E + A/N^alpha + B/D^beta")
    for name, arr in (("N", N), ("D", D)):
        if len(np.unique(arr)) < 2:
            raise ValueError(f"the Chinchilla law needs at least 2 distinct {name} values (got 1): "
                             f"vary both parameters and samples")
    pairs = np.unique(np.stack([N, D], axis=1), axis=0)
    if len(pairs) < 5:
        raise ValueError(f"the Chinchilla law has 5 parameters but only {len(pairs)} distinct (N, D) pairs were given")
    if not np.isfinite(flops_per_param_sample) or flops_per_param_sample <= 0:
        raise ValueError(f"flops_per_param_sample={flops_per_param_sample!r} must be > 0")
    refs = (_geomean(N), _geomean(D), _geomean(L))
    ln, ld, ly = np.log(N / refs[0]), np.log(D / refs[1]), np.log(L / refs[2])

    def identifiable(idx: np.ndarray) -> bool:
        return (len(np.unique(N[idx])) >= 2 and len(np.unique(D[idx])) >= 2
                and len(np.unique(np.stack([N[idx], D[idx]], axis=1), axis=0)) >= 5)

    with _one_blas_thread():
        fitted = _fit([ln, ld], ly, n_boot, seed, HUBER_DELTA, identifiable)

    def natural(theta: np.ndarray) -> np.ndarray:  # (..., 5) -> (..., 5) as E, A, B, alpha, beta
        a, b, e, alpha, beta = (theta[..., i] for i in range(5))
        return np.stack([refs[2] * np.exp(e), refs[2] * np.exp(a + alpha * np.log(refs[0])),
                         refs[2] * np.exp(b + beta * np.log(refs[1])), alpha, beta], axis=-1)

    names = ("E", "A", "B", "alpha", "beta")
    with np.errstate(over="ignore"):
        best = natural(fitted.theta)
        boots = natural(fitted.boot) if len(fitted.boot) else np.zeros((0, 5))
    return ChinchillaFit(
        params={k: float(v) for k, v in zip(names, best)},
        ci={k: _percentiles(boots[:, i]) for i, k in enumerate(names)},
        n_points=len(N), loss=fitted.loss, n_boot=len(fitted.boot),
        flops_per_param_sample=float(flops_per_param_sample),
        _refs=refs, _theta=fitted.theta, _boot=fitted.boot,
    )
