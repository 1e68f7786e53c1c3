"""Calibration of the law fits: synthetic loss surfaces from known E, A, B, alpha, beta, fitted by the
report's own estimators (``reports.scaling``), with the coverage of each parameter's 95% interval, of the
95% prediction interval for a new run at the held-out largest x (or budget), and how often the held-out
check rejects a true law.

Noise: a per-seed multiplicative offset shared by all of that seed's runs, plus per-run noise (log L).
The first study of each design is written through the runner's writers and read back through
``reports.collect``; it must equal the arrays the other studies are fitted from.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..collect import collect_results
from ..scaling import FORMS_1D, FORMS_2D, AffineCompute, allocation_bands, fit_chinchilla, fit_power_law
from ..scaling.select import held_out
from .ratios import trial_hash
from .stats import mc_se
from .synthetic import write_trials

TRUE_1D = {"E": 0.3, "A": 30.0, "alpha": 0.4}
TRUE_2D = {"E": 0.3, "A": 60.0, "alpha": 0.35, "B": 40.0, "beta": 0.4}
# xtra's affine compute, scaled to the simulated N (1e6 to 1e7): 1.61e3 FLOPs per image per encoder
# parameter (xtra.costs at the paper's widths) and a fixed part that is 55% of the smallest model's
PER_PARAM_FLOPS = 1.61e3
FIXED_FLOPS = PER_PARAM_FLOPS * 1e6 * 0.55 / 0.45


@dataclass(frozen=True)
class LawDesign:
    name: str
    seeds: int
    xs: tuple[float, ...] = (5e3, 1e4, 2e4, 4e4, 8e4)  # 1-D: samples
    ns: tuple[float, ...] = ()  # 2-D: parameters (then xs are the sample budgets)
    seed_sd: float = 0.005  # log L
    run_sd: float = 0.01
    tags: tuple[str, ...] = field(default=())

    @property
    def two_d(self) -> bool:
        return bool(self.ns)

    @property
    def truth(self) -> dict[str, float]:
        return TRUE_2D if self.two_d else TRUE_1D


def true_loss(design: LawDesign, N: np.ndarray | None, D: np.ndarray) -> np.ndarray:
    t = design.truth
    if design.two_d:
        assert N is not None
        return t["E"] + t["A"] / N ** t["alpha"] + t["B"] / D ** t["beta"]
    return t["E"] + t["A"] * D ** -t["alpha"]


def simulate(design: LawDesign, rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray, np.ndarray,
                                                                    np.ndarray]:
    """(N or None, D, L, seed) of one simulated study: every (N, D) point once per seed."""
    grid = [(n, d) for n in design.ns for d in design.xs] if design.two_d else [(None, d) for d in design.xs]
    rows = []
    for s in range(design.seeds):
        offset = rng.normal(0.0, design.seed_sd)
        for n, d in grid:
            noise = offset + rng.normal(0.0, design.run_sd)
            rows.append((n or 0.0, d, float(true_loss(design, np.asarray(n) if n else None, np.asarray(d))
                                           * math.exp(noise)), s))
    arr = np.asarray(rows, dtype=float)
    return (arr[:, 0] if design.two_d else None), arr[:, 1], arr[:, 2], arr[:, 3].astype(int)


def _round_trip(design: LawDesign, N: np.ndarray | None, D: np.ndarray, L: np.ndarray, seeds: np.ndarray,
                tmp: Path) -> None:
    """Write the study through the runner's writers, read it back through collect: same points."""
    trials = []
    for i, (d, loss, s) in enumerate(zip(D, L, seeds)):
        n = int(N[i]) if N is not None else 1_000_000
        params = {"pretrain.samples": int(d)} | ({"model.width": int(math.sqrt(n))} if N is not None else {})
        trials.append({"config_hash": trial_hash(design.name, i), "trial_id": f"t{i}", "seed": int(s),
                       "params": params, "result": {"block_size": 1, "width": int(math.sqrt(n)), "depth": 4,
                                                    "n_params": n + 1000, "n_params_encoder": n,
                                                    "flops_per_image": 1e9, "samples_seen": int(d),
                                                    "train_loss": loss, "val_loss": loss, "wall_s": 1.0}})
    axes: dict[str, list[Any]] = {"pretrain.samples": sorted({int(d) for d in D}),
                                  "seed": sorted({int(s) for s in seeds})}
    if N is not None:
        axes["model.width"] = sorted({int(math.sqrt(int(n))) for n in N})
    root = write_trials(tmp / design.name.replace(" ", "-"), name="law", axes=axes,
                        base={"pretrain.samples": int(D.max())}, trials=trials)
    fin = collect_results(root).finished
    cols = ["n_params_encoder", "samples_seen", "val_loss"] if N is not None else ["samples_seen", "val_loss"]
    back = fin.select(cols).sort(cols[:-1] + ["val_loss"]).to_numpy()
    mine = np.column_stack(([N.astype(int)] if N is not None else []) + [D.astype(int), L])
    mine = mine[np.lexsort(tuple(mine[:, j] for j in reversed(range(mine.shape[1]))))]
    if back.shape != mine.shape or not np.allclose(back, mine, rtol=1e-12):
        raise AssertionError(f"calibration: {design.name}: the points read back through collect differ from the "
                             "simulated ones")


class LawEstimate(NamedTuple):
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    pi: tuple[np.ndarray, np.ndarray] | None  # 95% PI at the held-out largest x from a fit without it


LawEstimator = Callable[[np.ndarray, np.ndarray, int, int], LawEstimate]


def report_law_estimator(x: np.ndarray, L: np.ndarray, n_draws: int, seed: int) -> LawEstimate:
    """The report's own 1-D law intervals: ``fit_power_law`` and ``held_out`` at the largest x."""
    fit = fit_power_law(x, L, n_boot=n_draws, seed=seed)
    h = held_out(FORMS_1D[0], x[:, None], L, x == x.max(), "the largest budget", n_boot=n_draws, seed=seed)
    return LawEstimate(fit.params, fit.ci, (h.lo, h.hi) if not isinstance(h, str) and h.has_interval else None)


def _two_d(design: LawDesign, N: np.ndarray, D: np.ndarray, L: np.ndarray, n_draws: int, seed: int,
           compute: AffineCompute, c_ref: float) -> tuple[LawEstimate, dict[str, tuple[float, float, float]]]:
    fit = fit_chinchilla(N, D, L, n_boot=n_draws, seed=seed, compute=compute, reference_compute=c_ref)
    X = np.column_stack([N, D])
    h = held_out(FORMS_2D[0], X, L, D == D.max(), "the largest budget", n_boot=n_draws, seed=seed)
    pi = (h.lo, h.hi) if not isinstance(h, str) and h.has_interval else None
    return LawEstimate(fit.params, fit.ci, pi), fit.allocation(c_ref)


def run_design(design: LawDesign, reps: int, n_draws: int, seed: int = 0,
               estimator: LawEstimator = report_law_estimator) -> list[dict[str, Any]]:
    """Simulate `reps` studies, fit each with the report's estimator, and return one result per interval
    kind: each parameter's 95% interval, the 95% prediction interval of a new run at the held-out largest
    budget (fitted without it), and the rate at which the held-out check rejects the true law (fewer than
    half its runs inside the PI). `estimator` replaces the 1-D law's (the tests run the old cluster
    bootstrap through it to show the suite fails it)."""
    rng = np.random.default_rng(seed)
    truth = design.truth
    hits: dict[str, list[bool]] = {k: [] for k in truth}
    errors: dict[str, list[float]] = {k: [] for k in truth}
    pi_hits: list[bool] = []
    with_pi: list[bool] = []  # studies whose held-out refit gave a prediction interval
    rejected: list[bool] = []
    compute = AffineCompute(FIXED_FLOPS, PER_PARAM_FLOPS)
    c_ref = float(max(d * compute.per_image(n) for n in design.ns for d in design.xs)) if design.two_d else 0.0
    alloc_truth = allocation_bands(truth, {k: np.asarray([v]) for k, v in truth.items()}, compute, c_ref) \
        if design.two_d else {}
    alloc_hits: dict[str, list[bool]] = {k: [] for k in alloc_truth}
    alloc_errors: dict[str, list[float]] = {k: [] for k in alloc_truth}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            N, D, L, seeds = simulate(design, rng)
            if rep == 0:
                _round_trip(design, N, D, L, seeds, Path(tmp))
            if design.two_d:
                assert N is not None
                est, allocation = _two_d(design, N, D, L, n_draws, rep, compute, c_ref)
                for k, (value, lo, hi) in allocation.items():
                    true_k = alloc_truth[k][0]
                    alloc_hits[k].append(bool(lo <= true_k <= hi))
                    alloc_errors[k].append(math.log(value / true_k) if k in ("N_opt", "D_opt", "D/N")
                                           else value - true_k)
            else:
                est = estimator(D, L, n_draws, rep)
            for k, v in truth.items():
                lo, hi = est.ci[k]
                hits[k].append(bool(lo <= v <= hi))
                errors[k].append(est.params[k] - v)
            mask = D == D.max()
            with_pi.append(est.pi is not None)
            if est.pi is not None:
                lo, hi = est.pi
                # a new run at each held-out point, from the truth and the noise model
                new = true_loss(design, N[mask] if N is not None else None, D[mask]) * np.exp(
                    rng.normal(0.0, design.seed_sd) + rng.normal(0.0, design.run_sd, int(mask.sum())))
                pi_hits += ((lo <= new) & (new <= hi)).tolist()
                rejected.append(bool(np.mean((lo <= L[mask]) & (L[mask] <= hi)) < 0.5))
    kind = "2-D law" if design.two_d else "1-D law"
    out = []
    for k in truth:
        out.append(_summary(f"{kind}: {k}", design, reps, hits[k], errors[k], truth[k], n_draws))
    for k in alloc_truth:  # bias and RMSE in log for N_opt, D_opt, D/N; in units for the exponents
        out.append(_summary(f"compute-optimal {k} at C_max (affine FLOPs)", design, reps, alloc_hits[k],
                            alloc_errors[k], alloc_truth[k][0], n_draws))
    out.append(_summary(f"{kind}: 95% PI of a new run at the held-out largest budget", design, reps, pi_hits, [],
                        None, n_draws, units=int(np.sum(with_pi)),
                        extra={"held_out_rejects_true_law": float(np.mean(rejected)) if rejected else None,
                               "with_interval": float(np.mean(with_pi))}))
    return out


def _summary(kind: str, design: LawDesign, reps: int, hits: list[bool], errors: list[float], truth: float | None,
             n_draws: int, units: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    n = len(hits)
    cov = float(np.mean(hits)) if n else float("nan")
    # the Monte Carlo error counts studies (`units`: those that gave an interval): the held-out runs of one
    # study share its fit, so its several prediction intervals are not independent trials
    err = np.asarray(errors, dtype=float)
    return {"kind": kind, "design": design.name, "true": truth, "seeds": design.seeds,
            "points": len(design.xs) * max(1, len(design.ns)), "reps": reps, "intervals": n, "coverage": cov,
            "mc_se": mc_se(cov, min(n, reps if units is None else units)) if n else None, "significant": None,
            "bias": float(err.mean()) if err.size else None,
            "rmse": float(np.sqrt(np.mean(err**2))) if err.size else None, "n_draws": n_draws,
            **(extra or {}), "tags": list(design.tags)}


def designs(seeds: tuple[int, ...] = (3, 5, 10)) -> list[LawDesign]:
    """1-D: 5 budgets a factor 2 apart; 2-D: 3 sizes x 4 budgets (the held-out fit keeps 3 budgets, the
    fewest that pin B and beta beside E), each at 3, 5 and 10 seeds; and the 2-D grid with 3 budgets, whose
    held-out fit has 2 (E then mostly goes to its bound, where the report gives no prediction interval)."""
    out = [LawDesign(f"1-D n={n}", n) for n in seeds]
    out += [LawDesign(f"2-D n={n}", n, xs=(1e4, 2.5e4, 6e4, 1.5e5), ns=(1e6, 3e6, 1e7)) for n in seeds]
    out += [LawDesign("2-D n=3, 3 budgets", 3, xs=(1e4, 3e4, 1e5), ns=(1e6, 3e6, 1e7))]
    # the block-size cpu study's budgets: the held-out refit keeps 3 budgets for 3 parameters
    out += [LawDesign(f"1-D n={n}, 4 budgets", n, xs=(7.5e3, 1.5e4, 3e4, 6e4)) for n in (3, 10)]
    return out
