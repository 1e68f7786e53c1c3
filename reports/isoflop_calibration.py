"""Calibration of the isoFLOP estimators from a known truth (docs/design.md, principle 5): simulated isoFLOP
studies from L(N, D) = E + A/N^alpha + B/D^beta under an affine FLOPs per image, with seed offsets and
per-run noise in log loss, run through the report's own estimators; per interval kind, the coverage of
the nominal 95% interval (with its Monte Carlo error), bias and RMSE of the point estimate, and how often
the estimator gave no interval.

Kinds: ``approach 1 a`` and ``approach 2 a`` (truth: the secant slope of the true log N_opt over the
lines' log C), ``multiplier M(D)`` (k's data scaled by a true M; only the closed, uncensored estimates
count, censored ones reported as a share), ``multiplier in law`` (one M_k), ``extrapolation PI`` (the share
of the largest-N runs inside the prediction interval of the law refitted without them). Approach 3 is
the report's L(N, D) fit, calibrated by ``reports.calibration`` (compute-optimal exponents).

Sizes are data: ``fast`` runs in the tests, ``default`` is what docs/reports.md publishes. A row has the
keys of ``reports.calibration``'s rows (kind, design, reps, coverage, mc_se, bias, rmse), so its suite
can list them beside its own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import approaches, extrapolation, multiplier
from .calibration.stats import mc_se
from .scaling.compute import AffineCompute, optimal_allocation

SIZES: dict[str, dict[str, Any]] = {
    "fast": {"reps": 60, "law_reps": 0, "draws": 1000, "n_boot": 20},
    "default": {"reps": 300, "law_reps": 200, "draws": 2000, "n_boot": 200},
}


@dataclass(frozen=True)
class Design:
    name: str
    truth: dict[str, float]
    compute: AffineCompute
    budgets: tuple[float, ...]
    sizes: tuple[float, ...]
    seeds: int = 1
    seed_sd: float = 0.005  # a seed's offset in log loss, shared by its runs
    run_sd: float = 0.01  # each run's own noise in log loss
    multiplier: float = 2.0  # k's data are worth this many baseline samples

    def true_loss(self, N: np.ndarray, D: np.ndarray) -> np.ndarray:
        t = self.truth
        return t["E"] + t["A"] / N ** t["alpha"] + t["B"] / D ** t["beta"]

    def true_slope(self) -> float:
        n_opt, _ = optimal_allocation(self.truth, self.compute, np.asarray(self.budgets))
        return float(np.polyfit(np.log(self.budgets), np.log(n_opt), 1)[0])


def designs() -> list[Design]:
    """The cpu preset's shape: 3 lines 2x apart, 5 sizes ~1.5-2x apart, optimum inside the sizes."""
    truth = {"E": 1.0, "A": 1000.0, "B": 300.0, "alpha": 0.34, "beta": 0.28}
    compute = AffineCompute(2e6, 400.0)
    budgets = (2e12, 4e12, 8e12)
    sizes = (5.5e4, 9.5e4, 2.1e5, 3.6e5, 8e5)
    return [Design(f"3 lines x 5 sizes, {n} seed{'s' if n > 1 else ''}", truth, compute, budgets, sizes, seeds=n)
            for n in (1, 3, 5, 10)]


# the approaches and M(D) run on the first designs only; the law-based kinds on every design
APPROACH_DESIGNS = 2


def simulate(design: Design, rng: np.random.Generator, multiplier_: float = 1.0) -> dict[str, np.ndarray]:
    """One study: every size on every line, once per seed; k's data worth ``multiplier_`` times as much."""
    rows: dict[str, list[float]] = {k: [] for k in ("N", "D", "L", "F", "seed")}
    for s in range(design.seeds):
        offset = rng.normal(0.0, design.seed_sd)
        for c in design.budgets:
            for n in design.sizes:
                f = float(design.compute.per_image(n))
                d = c / f
                loss = float(design.true_loss(np.asarray(n), np.asarray(multiplier_ * d)))
                rows["N"].append(n)
                rows["D"].append(d)
                rows["L"].append(loss * math.exp(offset + rng.normal(0.0, design.run_sd)))
                rows["F"].append(f)
                rows["seed"].append(s)
    return {k: np.asarray(v, dtype=float) for k, v in rows.items()}


def _row(kind: str, design: Design, hits: list[bool], errors: list[float], missing: int, seconds: float,
         studies: int | None = None) -> dict[str, Any]:
    """One interval kind's result; the Monte Carlo error counts studies (the intervals of one study share
    its noise, so several per study are not independent trials)."""
    n = len(hits)
    cov = float(np.mean(hits)) if n else float("nan")
    err = np.asarray(errors, dtype=float)
    se = mc_se(cov, min(n, studies or n)) if n else None
    return {"kind": kind, "design": design.name, "reps": n, "coverage": cov, "mc_se": se,
            "bias": float(err.mean()) if err.size else float("nan"),
            "rmse": float(np.sqrt(np.mean(err**2))) if err.size else float("nan"),
            "no_interval": missing, "seconds": seconds}


def run_design(design: Design, reps: int, law_reps: int, n_draws: int, n_boot: int, seed: int = 0
               ) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    truth = design.true_slope()
    out = []
    t0 = time.perf_counter()
    hits: dict[int, list[bool]] = {1: [], 2: []}
    errs: dict[int, list[float]] = {1: [], 2: []}
    missing = {1: 0, 2: 0}
    m_hits, m_errs, m_missing = [], [], 0
    for r in range(reps):
        base = simulate(design, rng)
        p = approaches.design_points(base["N"], base["D"], base["L"], base["F"], base["seed"])
        draws, _ = approaches.loss_draws(p, np.random.default_rng(seed + 7919 * r), n_draws)
        for a in (1, 2):
            e = approaches.empirical_exponent(p, a, draws)
            if not (math.isfinite(e.value) and e.has_interval):
                missing[a] += 1
                continue
            hits[a].append(e.lo <= truth <= e.hi)
            errs[a].append(e.value - truth)
        other = simulate(design, rng, design.multiplier)
        ms, _ = multiplier.per_budget(base, other, n_draws=n_draws, seed=seed + r)
        for m in ms:
            if m.status != "reached" or not math.isfinite(m.lo):
                m_missing += 1
                continue
            lo = 0.0 if m.lo_open else m.lo
            hi = math.inf if m.hi_open else m.hi
            m_hits.append(lo <= design.multiplier <= hi)
            m_errs.append(math.log(m.value / design.multiplier))
    seconds = time.perf_counter() - t0
    if reps:
        for a in (1, 2):
            out.append(_row(f"approach {a} a", design, hits[a], errs[a], missing[a], seconds / 3))
        out.append(_row("multiplier M(D)", design, m_hits, m_errs, m_missing, seconds / 3, studies=reps))
    t0 = time.perf_counter()
    l_hits, l_errs, l_missing = [], [], 0
    x_hits: dict[str, list[bool]] = {"linearised": [], "refit": []}
    x_errs: dict[str, list[float]] = {"linearised": [], "refit": []}
    x_missing = 0
    for r in range(law_reps):
        base = simulate(design, rng)
        other = simulate(design, rng, design.multiplier)
        law = multiplier.in_law(base, other, n_boot=n_boot, seed=seed + r)
        if math.isfinite(law.value):
            l_errs.append(math.log(law.value / design.multiplier))
        if math.isfinite(law.lo):
            l_hits.append(law.lo <= design.multiplier <= law.hi)
        else:
            l_missing += 1
        test = extrapolation.extrapolation_tests(base["N"], base["D"], base["L"], n_boot=n_boot, seed=seed + r)[0]
        # a study whose refit gave no interval is counted apart, never as a miss (it was once: "46%")
        if test.ran and test.runs and all(math.isfinite(lo) and math.isfinite(hi) for _, _, lo, hi in test.runs):
            kind = "refit" if test.note else "linearised"
            for actual, predicted, lo, hi in test.runs:
                x_hits[kind].append(lo <= actual <= hi)
                x_errs[kind].append(predicted / actual - 1)
        else:
            x_missing += 1
    if law_reps:
        seconds = time.perf_counter() - t0
        out.append(_row("multiplier in law", design, l_hits, l_errs, l_missing, seconds / 2))
        both = x_hits["linearised"] + x_hits["refit"]
        out.append(_row("extrapolation PI (largest N)", design, both, x_errs["linearised"] + x_errs["refit"],
                        x_missing, seconds / 2, studies=law_reps))
        for kind, label in (("linearised", "the refit inside its bounds: linearised"),
                            ("refit", "the refit at a bound: refitting bootstrap-t")):
            studies = max(1, round(law_reps * len(x_hits[kind]) / max(1, len(both))))
            out.append(_row(f"extrapolation PI (largest N), {label}", design, x_hits[kind], x_errs[kind], 0, 0.0,
                            studies=studies))
    return out


def run(size: str = "default", seed: int = 0) -> list[dict[str, Any]]:
    if size not in SIZES:
        raise ValueError(f"isoflop calibration size={size!r} is not known (allowed: {', '.join(SIZES)})")
    cfg = SIZES[size]
    rows = []
    for i, design in enumerate(designs()):
        reps = cfg["reps"] if i < APPROACH_DESIGNS else 0
        if reps or cfg["law_reps"]:
            rows += run_design(design, reps, cfg["law_reps"], cfg["draws"], cfg["n_boot"], seed=seed + 100 * i)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| kind | design | intervals | coverage of the 95% interval | bias | RMSE | no interval |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        cov = f"{100 * r['coverage']:.0f}% ± {100 * (r['mc_se'] or 0):.0f}" if math.isfinite(r["coverage"]) else "–"
        out.append(f"| {r['kind']} | {r['design']} | {r['reps']} | {cov} | {r['bias']:+.3f} | {r['rmse']:.3f} | "
                   f"{r['no_interval']} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python -m xtra.reports.isoflop_calibration [size]
    import sys

    print(to_markdown(run(sys.argv[1] if len(sys.argv) > 1 else "default")))
