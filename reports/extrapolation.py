"""Does the law extrapolate? Refit L(N, D) without the largest model (and, separately, without the
largest data budget) and predict the runs left out: the error, and whether each run falls inside the
95% prediction interval. The report's held-out check leaves out the largest budget only; a frontier is
bet on at a scale nobody ran, so the largest N is the test that matters (Hoffmann et al. 2022 checked
theirs on a 280B model they had not fitted).

Reuses ``reports.scaling.select.held_out`` (the refit and its prediction interval: linearised least squares,
t on n - p df, where the refit is inside its bounds; a refitting bootstrap-t where it is not, as it often is
here: E is hard to pin without the largest N; both measured on the cpu preset's isoFLOP design in
docs/reports.md#isoflop-approaches-multiplier-extrapolation): this module only chooses what is left out and
says whether a grid can support the test before any run (``support_lines``, for `xtra study show`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .scaling.feasibility import MIN_PAIRS
from .scaling.forms import FORMS_2D, MIN_POINTS_PER_PARAM, NAMES_2D

FULL = FORMS_2D[0]
NEED_FIT = FULL.n_params  # distinct (N, D) points the refit needs at all
NEED_LAW = int(math.ceil(MIN_POINTS_PER_PARAM * FULL.n_params))  # ...to be a law by the report's own rule


@dataclass
class Extrapolation:
    what: str  # "the largest N (N = 3.6e5)"
    n_train: int  # distinct design points refitted
    n_left: int  # runs predicted
    mean_abs_error: float  # |predicted / actual - 1|, mean over the runs left out
    inside: int  # runs inside the 95% prediction interval
    reason: str = ""  # why the test could not run (then the numbers are NaN)
    weak: bool = False  # refitted on fewer points than a law needs
    runs: tuple[tuple[float, float, float, float], ...] = ()  # (actual, predicted, lo, hi) per run left out
    note: str = ""  # how the prediction interval was made, where not the linearised one

    @property
    def ran(self) -> bool:
        return not self.reason

    def text(self) -> str:
        if not self.ran:
            return f"without {self.what}: no test ({self.reason})"
        weak = f"; refitted on {self.n_train} design points, under the {NEED_LAW} a law needs: a weak test" \
            if self.weak else ""
        return (f"without {self.what}: the law refitted on {self.n_train} design points predicts the "
                f"{self.n_left} run(s) left out with a mean error of {self.mean_abs_error:.1%}, "
                f"{self.inside}/{self.n_left} inside the 95% prediction interval"
                f"{f' ({self.note})' if self.note else ''}{weak}")


def _one(X: np.ndarray, L: np.ndarray, holdout: np.ndarray, what: str, n_boot: int, seed: int) -> Extrapolation:
    from .scaling.laws import ChinchillaFit
    from .scaling.select import held_out

    train_points = len(np.unique(X[~holdout], axis=0))
    if train_points < NEED_FIT:
        return Extrapolation(what, train_points, int(holdout.sum()), float("nan"), 0,
                             reason=f"{train_points} design points left, under the {NEED_FIT} the law's "
                                    f"parameters need")
    try:
        res = held_out(FULL, X, L, holdout, what, n_boot=n_boot, seed=seed, names=NAMES_2D, cls=ChinchillaFit)
    except ValueError as e:
        return Extrapolation(what, train_points, int(holdout.sum()), float("nan"), 0, reason=str(e))
    if isinstance(res, str):
        return Extrapolation(what, train_points, int(holdout.sum()), float("nan"), 0, reason=res)
    runs = tuple((float(a), float(p), float(lo), float(hi)) for a, p, lo, hi in zip(res.actual, res.predicted, res.lo,
                                                                                     res.hi))
    return Extrapolation(what, train_points, len(res.actual), res.mean_abs_rel_error, int(res.inside.sum()),
                         weak=train_points < NEED_LAW, runs=runs, note=res.note)


def extrapolation_tests(N: Any, D: Any, L: Any, n_boot: int = 200, seed: int = 0) -> list[Extrapolation]:
    """Leave out the largest N, then the largest D; one row per trial (seeds are replicates)."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    X = np.column_stack([N, D])
    out = []
    for col, name in ((N, "N"), (D, "D")):
        top = float(col.max()) if len(col) else float("nan")
        out.append(_one(X, L, col == top, f"the largest {name} ({name} = {top:.3g})", n_boot, seed))
    return out


def support_lines(points: Sequence[tuple[float, float]]) -> list[str]:
    """Before any run: can this grid of (N, D) design points support the extrapolation tests?"""
    pts = set(points)
    if len({p[0] for p in pts}) < 2 or len({p[1] for p in pts}) < 2:
        return []
    out = []
    for j, name in ((0, "N"), (1, "D")):
        top = max(p[j] for p in pts)
        left = [p for p in pts if p[j] != top]
        held = len(pts) - len(left)
        distinct = [len({p[i] for p in left}) for i in (0, 1)]
        if len(left) < max(NEED_FIT, MIN_PAIRS) or min(distinct) < 2:
            out.append(f"extrapolation without the largest {name}: cannot be tested ({len(left)} design points "
                       f"left with {distinct[0]} N and {distinct[1]} D values; the refit needs >= "
                       f"{max(NEED_FIT, MIN_PAIRS)} and 2 of each)")
        else:
            weak = "" if len(left) >= NEED_LAW else f", under the {NEED_LAW} a law needs: a weak test"
            out.append(f"extrapolation without the largest {name}: refit on {len(left)} design points, predicts "
                       f"the {held} left out{weak}")
    return out
