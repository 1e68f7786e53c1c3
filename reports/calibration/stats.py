"""The Monte Carlo arithmetic of the calibration suite."""

from __future__ import annotations

import math

NOMINAL = 0.95


def mc_se(coverage: float, n: int) -> float:
    """Monte Carlo standard error of a coverage measured on n intervals, never below the nominal 95%'s
    (a run of 12 studies that all cover does not show that an interval is exact)."""
    return math.sqrt(max(coverage * (1 - coverage), NOMINAL * (1 - NOMINAL)) / n) if n else float("nan")
