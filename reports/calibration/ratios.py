"""Calibration of the efficiency ratios: synthetic studies whose true ratio is known, written through the
runner's writers, read back through ``reports.collect`` and the report's own selection
(``reports.evaluation.budget_rows``), and estimated by ``reports.efficiency``.

The truth: top-1 rises linearly in log samples (or log parameters), ``SLOPE`` per doubling, and block
size k=2 is ``ratio`` x ahead of k=1: it reaches k=1's top-1 at k=1's largest budget with ``ratio`` x fewer
samples (exactly, between budgets, since the estimator interpolates in log x). Noise: a per-(k, seed)
offset shared by all budgets of that seed (its initialisation and data order), plus per-model noise on
each trial. A design may lose one trial (a failed run) to test a budget that some seeds lack.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .. import efficiency as eff
from ..collect import collect_results
from ..evaluation import budget_rows
from ..panel import param_axis
from .stats import mc_se
from .synthetic import write_trials

SLOPE = 0.008  # top-1 per doubling of samples: the block-size cpu study's 0.8 points
TOP = 0.80  # k=1's true top-1 at its largest budget
BUDGETS_4 = (7500, 15000, 30000, 60000)
ENCODER_REST = 400_000  # parameters outside the encoder (predictor, heads): constant across widths


@dataclass(frozen=True)
class RatioDesign:
    """One simulated design: what is varied (samples or parameters), the true ratio, seeds, the grid,
    the noise (seed offset and per-model standard deviations, in top-1 fractions) and a lost trial."""

    name: str
    ratio: float
    seeds: int
    xs: tuple[float, ...] = BUDGETS_4
    what: str = "samples"  # or "parameters"
    seed_sd: float = 0.0015
    model_sd: float = 0.0019
    lose: tuple[int, int, int] | None = None  # (k, seed index, x index) of a failed trial
    tags: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        return f"{self.what} ratio"


def trial_hash(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def simulate_trials(design: RatioDesign, rng: np.random.Generator) -> tuple[dict[str, list[Any]], dict[str, Any],
                                                                             list[dict[str, Any]]]:
    """(axes, base, trials) of one simulated study from the design's truth."""
    x_key = "pretrain.samples" if design.what == "samples" else "model.width"
    trials = []
    largest = design.xs[-1]
    for k, speed in ((1, 1.0), (2, design.ratio)):
        for si in range(design.seeds):
            offset = rng.normal(0.0, design.seed_sd)
            for xi, x in enumerate(design.xs):
                top1 = TOP + SLOPE * math.log2(speed * x / largest) + offset + rng.normal(0.0, design.model_sd)
                chash = trial_hash(design.name, k, si, x)
                if design.what == "samples":
                    width, samples, n_enc = 128, int(x), 1_000_000
                else:
                    width, samples, n_enc = int(64 * math.sqrt(x / design.xs[0])), 30000, int(x)
                params = {"model.block_size": k, x_key: width if design.what != "samples" else samples}
                common = {"config_hash": chash, "trial_id": f"k{k}-s{si}-{xi}", "seed": si, "params": params}
                if design.lose == (k, si, xi):
                    trials.append({**common, "error": "RuntimeError: non-finite loss (a lost trial)"})
                    continue
                trials.append({**common, "result": {
                    "block_size": k, "width": width, "depth": 4, "n_params": n_enc + ENCODER_REST,
                    "n_params_encoder": n_enc, "flops_per_image": 1e9, "samples_seen": samples,
                    "train_loss": 0.5, "val_loss": 0.5, "linear_top1": top1, "attentive_top1": top1,
                    "wall_s": 1.0}})
    widths = sorted({t["params"].get("model.width") for t in trials if "model.width" in t["params"]})
    axes: dict[str, list[Any]] = {"model.block_size": [1, 2], "seed": list(range(design.seeds))}
    if design.what == "samples":
        axes["pretrain.samples"] = [int(x) for x in design.xs]
        base = {"model.block_size": 1, "pretrain.samples": int(largest), "model.width": 128}
    else:
        axes["model.width"] = widths
        base = {"model.block_size": 1, "model.width": widths[-1], "pretrain.samples": 30000}
    return axes, base, trials


Estimator = Callable[[pl.DataFrame, str, int, int], pl.DataFrame]


def report_estimator(rows: pl.DataFrame, what: str, n_draws: int, seed: int) -> pl.DataFrame:
    """The report's own estimator: ``sample_efficiency`` or ``parameter_efficiency``."""
    if what == "samples":
        return eff.sample_efficiency(rows, kind="linear", baseline=1, n_boot=n_draws, seed=seed)
    return eff.efficiency_ratios(rows, x="params", group="block_size", baseline=1, n_boot=n_draws, seed=seed)


def study_rows(root: Path, what: str) -> pl.DataFrame:
    """The rows the report computes a ratio from, read back through collect and the report's selection."""
    study = collect_results(root)
    if what == "samples":
        rows, why = budget_rows(study, "linear")
        if rows.is_empty():
            raise ValueError(f"calibration: the report found no budget rows in {root} ({why})")
        return rows
    ncol, _ = param_axis(study)
    fin = study.finished
    return fin.select("config_hash", pl.col("block_size").cast(pl.Int64), "seed", pl.col(ncol).alias("params"),
                      pl.col("linear_top1").alias("top1"))


def memory_rows(trials: Sequence[dict[str, Any]], what: str) -> pl.DataFrame:
    """The rows ``study_rows`` reads back from disk, built from the simulated trials directly."""
    x = "samples" if what == "samples" else "params"
    src = "samples_seen" if what == "samples" else "n_params_encoder"
    return pl.DataFrame([{"config_hash": t["config_hash"], "block_size": t["result"]["block_size"], "seed": t["seed"],
                          x: t["result"][src], "top1": t["result"]["linear_top1"]}
                         for t in trials if t.get("error") is None],
                        schema={"config_hash": pl.String, "block_size": pl.Int64, "seed": pl.Int64, x: pl.Int64,
                                "top1": pl.Float64})


def _same_rows(disk: pl.DataFrame, memory: pl.DataFrame) -> bool:
    cols = memory.columns
    a = disk.select([pl.col(c).cast(memory.schema[c]) for c in cols]).sort("config_hash")
    return a.equals(memory.sort("config_hash"))


def run_design(design: RatioDesign, reps: int, n_draws: int, seed: int = 0, disk_reps: int | None = None,
               estimator: Estimator = report_estimator, workdir: Path | None = None) -> dict[str, Any]:
    """Simulate `reps` studies of one design and estimate each; return the coverage of the nominal 95%
    interval (open ends extend without limit), its Monte Carlo error, the rate of "significant", and bias /
    RMSE of the log ratio over the studies whose point was reached. The first `disk_reps` studies (all
    when None) are written through the runner's writers and read back through ``reports.collect`` and the
    report's selection; each of those must equal the frame built in memory from the same trials, which the
    other studies use (the estimator is the same; only the file round trip, ~0.5 s a study, is skipped)."""
    rng = np.random.default_rng(seed)
    covered, significant, log_errors, censored, widths = [], [], [], 0, []
    left_out_named = 0
    disk_reps = reps if disk_reps is None else min(disk_reps, reps)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for rep in range(reps):
            axes, base, trials = simulate_trials(design, rng)
            rows = memory_rows(trials, design.what)
            if rep < disk_reps:
                root = write_trials(Path(tmp) / f"rep{rep}", name=design.name.replace(" ", "-").replace("=", ""),
                                    axes=axes, base=base, trials=trials)
                disk = study_rows(root, design.what)
                if not _same_rows(disk, rows):
                    raise AssertionError(f"calibration: {design.name}: the rows read back through collect differ "
                                         f"from the simulated trials:\n{disk}\n{rows}")
            (row,) = estimator(rows, design.what, n_draws, seed + rep).iter_rows(named=True)
            lo = 0.0 if row["lo_open"] else row["ratio_lo"]
            hi = math.inf if row["hi_open"] else row["ratio_hi"]
            covered.append(lo <= design.ratio <= hi)
            significant.append(bool(row["significant"]))
            left_out_named += bool(row.get("left_out"))
            if row["status"] == "reached":
                log_errors.append(math.log(row["ratio"] / design.ratio))
            else:
                censored += 1
            if math.isfinite(hi) and lo > 0:
                widths.append(hi / lo)
    cov = float(np.mean(covered))
    err = np.asarray(log_errors)
    return {"kind": design.kind, "design": design.name, "true": design.ratio, "seeds": design.seeds,
            "points": len(design.xs), "reps": reps, "coverage": cov, "mc_se": mc_se(cov, reps),
            "significant": float(np.mean(significant)), "censored": censored / reps,
            "bias_log": float(err.mean()) if err.size else None,
            "rmse_log": float(np.sqrt(np.mean(err**2))) if err.size else None,
            "median_width": float(np.median(widths)) if widths else None,
            "left_out_named": left_out_named / reps, "disk_reps": disk_reps, "tags": list(design.tags)}


def designs(seeds: Sequence[int] = (3, 5, 10)) -> list[RatioDesign]:
    """The designs of the suite: true ratio 1 (no effect), 1.3 and 2 at 3, 5 and 10 seeds on 4 budgets; 3 and 8
    budgets; per-model noise only; a lost trial at k=2's largest budget; parameter ratios from a width sweep."""
    out = [RatioDesign(f"samples r={r:g} n={n}", r, n) for r in (1.0, 1.3, 2.0) for n in seeds]
    out += [RatioDesign(f"samples r={r:g} n=3, 3 budgets", r, 3, xs=(7500, 15000, 30000)) for r in (1.0, 1.3)]
    eight = tuple(int(round(3750 * 2 ** (i / 2))) for i in range(8))  # 3,750 to 42,426: half-doublings
    out += [RatioDesign(f"samples r={r:g} n=3, 8 budgets", r, 3, xs=eight) for r in (1.0, 1.3)]
    out += [RatioDesign("samples r=1.3 n=3, per-model noise only", 1.3, 3, seed_sd=0.0, model_sd=0.0024)]
    out += [RatioDesign(f"samples r={r:g} n=3, k=2 lacks 60k in one seed", r, 3, lose=(2, 0, 3)) for r in (1.0, 2.0)]
    out += [RatioDesign(f"parameters r={r:g} n={n}", r, n, xs=(1e6, 2e6, 4e6, 8e6), what="parameters")
            for r in (1.0, 2.0) for n in seeds]
    return out
