"""A synthetic study directory with the real layout and column schema (for tests and the benchmark).

Losses follow a Chinchilla surface in (parameters, samples seen) plus a block-size effect and seed
noise; probe accuracy falls with loss. Some trials fail with an error and NaN metrics, like real
ones. Nothing here trains a model: it exercises ``reports`` at any size.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from xtra import studydir

TRUE_LAW = {"E": 0.3, "A": 30.0, "alpha": 0.4, "B": 40.0, "beta": 0.45}  # per-pixel L2 loss, made up
BLOCK_EFFECT = {1: 0.02, 2: 0.0, 4: 0.01, 8: 0.05}  # extra loss by k
TOKENS = 64  # an 8x8 patch grid


def _n_params(width: int, depth: int) -> int:
    return 12 * depth * width * width + 2 * TOKENS * width + 4 * width * width


def _config_hash(cfg: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def study_toml(name: str, description: str, base: dict[str, Any], axes: dict[str, list[Any]]) -> str:
    """The study.toml the runner would write for these axes (a ``seed`` axis: the study's seeds), through
    the study file's own writer (``xtra.studies.spec.Study.to_toml``)."""
    from xtra.studies.spec import Axis, Study

    seeds = tuple(axes.get("seed", [0]))
    swept = tuple(Axis(k, (k,), tuple({k: v} for v in values)) for k, values in axes.items() if k != "seed")
    return Study(name=name, description=description, size="cpu-s", preset=None, source=name, base=dict(base),
                 axes=swept, seeds=seeds).to_toml()


@dataclass(frozen=True)
class _Spec:
    """What ``xtra.studydir.write_results`` reads of the runner's spec: its name, preset and swept keys."""

    name: str
    swept_keys: list[str]
    preset: str = ""


def write_trials(path: str | Path, *, name: str, axes: dict[str, list[Any]], base: dict[str, Any],
                 trials: Sequence[dict[str, Any]]) -> Path:
    """Write a study the way the runner does: study.toml, each trial's directory through ``xtra.trialdir``
    (params.json, then trial.json for a finished trial or an attempt with its error for a failed one),
    then results.parquet / curves.parquet / probes.parquet through ``xtra.studydir.write_results``, the
    runner's own writer. A trial: config_hash, trial_id, seed, params (the swept values), and either
    result (the finished trial's row) or error (a failed trial). Returns the study directory."""
    from xtra import trialdir as td  # the one owner of the trial-directory layout

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    studydir.write_study_toml(root, study_toml(name, "synthetic study from a known truth", base, axes))
    for t in trials:
        tdir = td.path(root, t["config_hash"])
        tdir.mkdir(parents=True, exist_ok=True)
        td.write_params(tdir, study=name, preset=None, trial_id=t["trial_id"], params=t["params"], seed=t["seed"],
                        config_hash=t["config_hash"])
        if t.get("error") is None:
            td.write_result(tdir, t["result"])
        else:
            td.record_attempt(tdir, "failed", error=t["error"])
    spec = _Spec(name=name, swept_keys=[k for k in axes if k != "seed"])
    studydir.write_results(spec, root, studydir.all_trials(root, running=False))  # type: ignore[arg-type]
    return root



def make_study(
    path: str | Path,
    *,
    name: str = "synthetic",
    block_sizes: Sequence[int] = (1, 2, 4, 8),
    widths: Sequence[int] = (128,),
    samples: Sequence[int] = (20_000,),
    seeds: Sequence[int] = (0,),
    n_trials: int | None = None,
    n_curve_rows: int = 50,
    failed: Sequence[int] = (),
    nan_probe: Sequence[int] = (),
    layout: str = "parquet",
    depth: int = 4,
    noise: float = 0.01,
    base: dict[str, Any] | None = None,
    write_spec: bool = True,
    rng_seed: int = 0,
    probe_points: Sequence[float] = (),
) -> Path:
    """Write a study directory and return its path.

    Trials are the product of ``seeds x block_sizes x widths x samples`` (seed slowest), cut to
    ``n_trials`` when given (seeds continue past ``seeds`` to reach it). ``failed`` / ``nan_probe``
    are trial indices that fail / finish without probe results. ``layout``: ``"parquet"`` writes
    results.parquet + curves.parquet, ``"trials"`` only ``trials/<hash>/{trial.json,metrics.jsonl}``
    (a study mid-run), ``"both"`` both. ``probe_points``: fractions of each trial's budget at which
    its checkpoints were probed (linear and attentive; the end is always included), written as the
    trials' probe rows and probes.parquet: top-1 rises along pretraining, faster for larger k.
    """
    if layout not in ("parquet", "trials", "both"):
        raise ValueError(f"layout={layout!r} is not allowed (allowed: 'parquet', 'trials', 'both')")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(rng_seed)
    base = base or {"model.block_size": 4, "model.width": widths[0], "pretrain.samples": samples[-1]}
    axes: dict[str, list[Any]] = {}
    if len(block_sizes) > 1:
        axes["model.block_size"] = list(block_sizes)
    if len(widths) > 1:
        axes["model.width"] = list(widths)
    if len(samples) > 1:
        axes["pretrain.samples"] = list(samples)
    per_seed = len(block_sizes) * len(widths) * len(samples)
    total = n_trials if n_trials is not None else per_seed * len(seeds)
    seed_values = list(seeds) + list(range(max(seeds) + 1, max(seeds) + 1 + math.ceil(total / per_seed)))
    if n_trials is not None or len(seeds) > 1:
        axes["seed"] = seed_values[: math.ceil(total / per_seed)]
    combos = list(itertools.islice(itertools.product(seed_values, block_sizes, widths, samples), total))

    law = TRUE_LAW
    failed_set, nan_set = set(failed), set(nan_probe)
    results: list[dict[str, Any]] = []
    curve_cols: dict[str, list[np.ndarray]] = {c: [] for c in ("trial_id", "config_hash", "step", "samples_seen",
                                                               "loss", "lr", "wall_s")}
    batch = 128
    for i, (seed, k, width, n_samples) in enumerate(combos):
        cfg = {"model.block_size": k, "model.width": width, "pretrain.samples": n_samples, "seed": seed,
               "model.depth": depth}
        chash = _config_hash(cfg)
        trial_id = f"{name}_{i:05d}"
        n_params = _n_params(width, depth)
        loss = (law["E"] + law["A"] / n_params ** law["alpha"] + law["B"] / n_samples ** law["beta"]
                + BLOCK_EFFECT.get(k, 0.03)) * math.exp(rng.normal(0.0, noise))
        top1 = min(0.98, max(0.05, 1.05 - 0.6 * loss - 0.01 * abs(math.log2(k) - 2)))
        lin = top1 + rng.normal(0.0, 0.005)
        att = min(0.99, top1 + 0.03 + rng.normal(0.0, 0.005))
        ok = i not in failed_set
        row = {
            "study": name, "trial_id": trial_id, "config_hash": chash,
            "status": "finished" if ok else "failed",
            "error": None if ok else f"RuntimeError: non-finite loss at step {17 + i} (trial {trial_id})",
            "seed": seed, "model.block_size": k, "model.width": width, "pretrain.samples": n_samples,
            "block_size": k, "width": width, "depth": depth, "n_params": n_params,
            "n_params_encoder": int(n_params * 0.7), "flops_per_image": 6 * n_params * TOKENS,
            "samples_seen": n_samples if ok else n_samples // 3,
            "train_loss": loss if ok else float("nan"), "val_loss": loss * 1.01 if ok else float("nan"),
            "linear_top1": lin if ok and i not in nan_set else float("nan"),
            "attentive_top1": att if ok and i not in nan_set else float("nan"),
            "linear_best_lr": 1e-3, "attentive_best_lr": 3e-4, "wall_s": 10.0 + n_samples / 1000,
        }
        results.append(row)
        steps = np.arange(1, n_curve_rows + 1)
        seen = np.linspace(n_samples / n_curve_rows, row["samples_seen"], n_curve_rows).round()
        curve = loss * (seen / seen[-1]) ** -0.15 * (1 + 0.02 * rng.standard_normal(n_curve_rows))
        curve_cols["trial_id"].append(np.full(n_curve_rows, trial_id, dtype=object))
        curve_cols["config_hash"].append(np.full(n_curve_rows, chash, dtype=object))
        curve_cols["step"].append(steps * max(1, n_samples // batch // n_curve_rows))
        curve_cols["samples_seen"].append(seen)
        curve_cols["loss"].append(np.maximum(curve, 1e-3))
        curve_cols["lr"].append(1e-3 * np.cos(np.linspace(0, np.pi / 2, n_curve_rows)))
        curve_cols["wall_s"].append(np.linspace(0.1, row["wall_s"], n_curve_rows))

    probe_rows: dict[str, list[dict[str, Any]]] = {}
    if probe_points:
        for row in results:
            if row["status"] != "finished":
                continue
            fractions = sorted({*probe_points, 1.0})
            speed = {1: 1.0, 2: 1.6, 4: 2.2, 8: 1.2}.get(row["block_size"], 1.0)
            out = []
            for f in fractions:
                for kind in ("linear", "attentive"):
                    end = row[f"{kind}_top1"]
                    if end is None or not math.isfinite(end):
                        continue
                    top1 = end - 0.25 * (1 - min(1.0, f * speed)) ** 2 + rng.normal(0.0, 0.002)
                    out.append({"samples": int(round(f * row["samples_seen"])), "dataset": "fashion-mnist",
                                "kind": kind, "top1": top1, "best_lr": 1e-3, "best_val_top1": top1,
                                "still_improving": False})
            probe_rows[row["config_hash"]] = out
            row["probe_hash"] = f"p{row['config_hash'][:11]}"
    res_df = pl.DataFrame(results, infer_schema_length=None)
    curves = pl.DataFrame({c: np.concatenate(v) if v else np.array([]) for c, v in curve_cols.items()})
    curves = curves.with_columns(pl.lit(name).alias("study"), pl.col("trial_id").cast(pl.String),
                                 pl.col("config_hash").cast(pl.String)).select(
        "study", "trial_id", "config_hash", "step", "samples_seen", "loss", "lr", "wall_s")

    if write_spec:
        studydir.write_study_toml(root, study_toml(name, "synthetic study for reports", base, axes))
    if layout in ("trials", "both"):  # the runner's layout: params.json, then trial.json or status.json
        swept_keys = ("model.block_size", "model.width", "pretrain.samples")
        from xtra import trialdir as td  # the one owner of the trial-directory layout

        for row, part in zip(results, curves.partition_by("config_hash", maintain_order=True)):
            tdir = td.path(root, row["config_hash"])
            tdir.mkdir(parents=True, exist_ok=True)
            params = {k: row[k] for k in swept_keys if k in axes}
            td.write_params(tdir, study=name, preset=None, trial_id=row["trial_id"], params=params, seed=row["seed"],
                            config_hash=row["config_hash"])
            if row["status"] == "finished":
                td.write_result(tdir, {k: v for k, v in row.items() if k not in ("study", "trial_id", *swept_keys)})
            else:
                td.record_attempt(tdir, "failed", error=row["error"])
            for m in part.select("step", "samples_seen", "loss", "lr", "wall_s").to_dicts():
                td.append_jsonl(tdir / td.METRICS, m)
            if row["config_hash"] in probe_rows:
                td.write_json(td.probe_path(tdir, row["probe_hash"]), {"rows": probe_rows[row["config_hash"]]})
    if layout in ("parquet", "both"):  # written last, like the runner at the end of a run
        res_df.write_parquet(root / studydir.RESULTS)
        curves.write_parquet(root / studydir.CURVES)
        if probe_rows:
            by_hash = {r["config_hash"]: r for r in results}
            pl.DataFrame([{"study": name, "trial_id": by_hash[h]["trial_id"], "config_hash": h,
                           "probe_hash": by_hash[h]["probe_hash"], "seed": by_hash[h]["seed"], **r}
                          for h, rows in probe_rows.items() for r in rows]).write_parquet(root / studydir.PROBES)
    return root
