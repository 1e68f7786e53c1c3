"""Compute-optimal allocation under xtra's own training FLOPs, which are affine in the encoder's parameters.

A study's FLOPs per image (``xtra.costs.flops_per_image``) are ``fixed + per_param * N`` in the encoder
parameters N the laws are fitted in: the predictor, the projection and the pixel head do not scale with
the encoder (41.5 GFLOP + 1.61e3·N for the paper's widths, 55% fixed at the smallest). A power law
``C = c * N**g * D`` fitted through those points gets g = 0.68, moves the exponent a = beta/(alpha+g beta)
from 0.50 to 0.595 at alpha = beta = 0.3 and misjudges compute 1.9x at 10x the largest N. So the frontier
is solved numerically under C = D * (fixed + per_param * N):

    minimise  L(N, C / f(N)) = E + A N^-alpha + B C^-beta f(N)^beta   over N,   f(N) = fixed + per_param N

whose first-order condition  alpha A N^-alpha = beta B C^-beta f(N)^(beta-1) per_param N  has one root
(the difference of the two sides is increasing in log N), found by bisection for many C and many
bootstrap draws at once. The exponents are local: a(C) = d log N_opt / d log C (1/(alpha/beta + 1) only
when fixed = 0). Bands: percentiles over the law's t-calibrated parameter draws (``linearised``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..intervals import percentile_interval

LOG_N_RANGE = (0.0, 80.0)  # natural log of N searched: 1 to 5e34 parameters
BISECTIONS = 64  # the log-N range of 80 halved 64 times: 4e-18, below float precision of log N
LOCAL_STEP = 0.01  # relative step of C for the local exponent


@dataclass(frozen=True)
class AffineCompute:
    """Training FLOPs per image = fixed + per_param * N (N: the parameters the law is fitted in)."""

    fixed: float
    per_param: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.fixed) and self.fixed >= 0):
            raise ValueError(f"AffineCompute.fixed={self.fixed!r} must be >= 0 (FLOPs per image not scaling with N)")
        if not (np.isfinite(self.per_param) and self.per_param > 0):
            raise ValueError(f"AffineCompute.per_param={self.per_param!r} must be > 0 (FLOPs per image per parameter)")

    def per_image(self, N: Any) -> np.ndarray:
        return self.fixed + self.per_param * np.asarray(N, dtype=float)

    def describe(self) -> str:
        return f"FLOPs/image = {self.fixed:.4g} + {self.per_param:.4g}·N"

    @classmethod
    def from_trials(cls, N: Any, flops_per_image: Any) -> AffineCompute:
        """Least squares of the trials' own FLOPs per image on N (a negative intercept, which FLOPs cannot
        have, is refitted through the origin). One distinct N: all of it scales with N."""
        n = np.asarray(N, dtype=float)
        f = np.asarray(flops_per_image, dtype=float)
        if len(np.unique(n)) < 2:
            return cls(0.0, float(np.median(f / n)))
        slope, intercept = np.polyfit(n, f, 1)
        if intercept < 0 or slope <= 0:
            return cls(0.0, float(np.sum(n * f) / np.sum(n * n)))
        return cls(float(intercept), float(slope))


def optimal_log_n(params: dict[str, Any], compute: AffineCompute, C: Any) -> np.ndarray:
    """log N_opt for every C (broadcast against arrays of parameters, e.g. the law's parameter draws)."""
    A, B = np.asarray(params["A"], dtype=float), np.asarray(params["B"], dtype=float)
    alpha, beta = np.asarray(params["alpha"], dtype=float), np.asarray(params["beta"], dtype=float)
    log_c = np.log(np.asarray(C, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        left = np.log(alpha * A)  # log of alpha A N^-alpha, plus alpha log N
        right = np.log(beta * B * compute.per_param) - beta * log_c

        def gap(u: np.ndarray) -> np.ndarray:  # increasing in u = log N
            log_f = np.log(compute.fixed + compute.per_param * np.exp(u))
            return right + (beta - 1) * log_f + u - (left - alpha * u)

        shape = np.broadcast(left, right).shape
        lo, hi = np.full(shape, LOG_N_RANGE[0]), np.full(shape, LOG_N_RANGE[1])
        for _ in range(BISECTIONS):
            mid = 0.5 * (lo + hi)
            up = gap(mid) > 0
            hi = np.where(up, mid, hi)
            lo = np.where(up, lo, mid)
        out = 0.5 * (lo + hi)
    ok = np.isfinite(left) & np.isfinite(right) & (alpha > 0) & (beta > 0)
    return np.where(ok, out, np.nan)


def optimal_allocation(params: dict[str, Any], compute: AffineCompute, C: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N_opt, D_opt) minimising L(N, D) subject to C = D * (fixed + per_param * N)."""
    n_opt = np.exp(optimal_log_n(params, compute, C))
    return n_opt, np.asarray(C, dtype=float) / compute.per_image(n_opt)


def local_exponents(params: dict[str, Any], compute: AffineCompute, C: Any) -> tuple[np.ndarray, np.ndarray]:
    """(a, b): d log N_opt / d log C and d log D_opt / d log C at C (a + b = 1 only when fixed = 0)."""
    C = np.asarray(C, dtype=float)
    n0, d0 = optimal_allocation(params, compute, C)
    n1, d1 = optimal_allocation(params, compute, C * (1 + LOCAL_STEP))
    step = np.log1p(LOCAL_STEP)
    return np.log(n1 / n0) / step, np.log(d1 / d0) / step


def allocation_bands(point: dict[str, float], draws: dict[str, np.ndarray], compute: AffineCompute,
                     C: float, level: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """At compute C: N_opt, D_opt, D/N and the local exponents a, b, each as (value, lo, hi) with the
    percentile band over the draws of the law's parameters."""
    out: dict[str, tuple[float, float, float]] = {}
    n, d = optimal_allocation(point, compute, C)
    a, b = local_exponents(point, compute, C)
    nb, db = optimal_allocation(draws, compute, C)
    ab, bb = local_exponents(draws, compute, C)
    for name, value, boot in (("N_opt", n, nb), ("D_opt", d, db), ("D/N", d / n, db / nb), ("a", a, ab),
                              ("b", b, bb)):
        lo, hi = percentile_interval(np.asarray(boot), level)
        out[name] = (float(value), lo, hi)
    return out
