"""Synthetic study directories from a known truth, for the report tests, the report benchmark and the
calibration suite; written through the runner's own writers (study.toml by ``Study.to_toml``, the trial
directories by ``xtra.trialdir``, the parquet files by ``xtra.studydir.write_results`` with
``xtra.results.result_row``), so a report test reads what a real study would hold.

Losses follow a Chinchilla surface in (parameters, samples seen) plus a block-size effect and seed
noise; probe accuracy falls with loss. Some trials fail with an error, like real ones. Nothing here
trains a model: it exercises ``reports`` at any size. The trials' config hashes and parameter counts
are the truth's own (no TrialConfig is built for them).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xtra import studydir
from xtra import trialdir as td
from xtra.studies.spec import Axis, Study

TRUE_LAW = {"E": 0.3, "A": 30.0, "alpha": 0.4, "B": 40.0, "beta": 0.45}  # per-pixel L2 loss, made up
BLOCK_EFFECT = {1: 0.02, 2: 0.0, 4: 0.01, 8: 0.05}  # extra loss by k
TOKENS = 64  # an 8x8 patch grid


def _n_params(width: int, depth: int) -> int:
    return 12 * depth * width * width + 2 * TOKENS * width + 4 * width * width


def _config_hash(cfg: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def synthetic_study(name: str, description: str, base: dict[str, Any], axes: dict[str, list[Any]]) -> Study:
    """The typed study these axes make (a ``seed`` axis: the study's seeds): what the runner would have run."""
    seeds = tuple(axes.get("seed", [0]))
    swept = tuple(Axis(k, (k,), tuple({k: v} for v in values)) for k, values in axes.items() if k != "seed")
    return Study(name=name, description=description, size="cpu-s", preset=None, source=name, base=dict(base),
                 axes=swept, seeds=seeds)


def study_toml(name: str, description: str, base: dict[str, Any], axes: dict[str, list[Any]]) -> str:
    """The study.toml the runner would write, through the study file's own writer (``Study.to_toml``)."""
    return synthetic_study(name, description, base, axes).to_toml()


def write_trials(path: str | Path, *, name: str, axes: dict[str, list[Any]], base: dict[str, Any],
                 trials: Sequence[dict[str, Any]], layout: str = "both", write_spec: bool = True,
                 description: str = "synthetic study from a known truth") -> Path:
    """Write a study the way the runner does: study.toml (``Study.to_toml``), each trial's directory through
    ``xtra.trialdir`` (params.json; trial.json for a finished trial, an attempt with its error for a failed
    one; its curve in metrics.jsonl; its probe rows), then results.parquet / curves.parquet / probes.parquet
    through ``xtra.studydir.write_results``, the runner's own writer (rows by ``xtra.results.result_row``).
    A trial: config_hash, trial_id, seed, params (the swept values), either result (the finished trial's
    row) or error (a failed trial), and optionally curve (metrics.jsonl rows) and probe_rows (with the
    result's probe_hash). ``layout``: "both", "parquet" (the trial directories removed once the parquet
    files are written) or "trials" (a study mid-run: no parquet files). Returns the study directory."""
    if layout not in ("parquet", "trials", "both"):
        raise ValueError(f"layout={layout!r} is not allowed (allowed: 'parquet', 'trials', 'both')")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    study = synthetic_study(name, description, base, axes)
    if write_spec:
        studydir.write_study_toml(root, study.to_toml())
    for t in trials:
        tdir = td.path(root, t["config_hash"])
        tdir.mkdir(parents=True, exist_ok=True)
        td.write_params(tdir, study=name, preset=None, trial_id=t["trial_id"], params=t["params"], seed=t["seed"],
                        config_hash=t["config_hash"])
        if t.get("curve"):
            td.write_metrics(tdir, t["curve"])
        if t.get("error") is None:
            td.write_result(tdir, t["result"])
        else:
            td.record_attempt(tdir, "failed", error=t["error"])
        if t.get("probe_rows"):
            td.write_json(td.probe_path(tdir, t["result"]["probe_hash"]), {"rows": t["probe_rows"]})
    if layout != "trials":  # written last, like the runner at the end of a run
        states = [td.read_state(td.path(root, t["config_hash"]), running=False) for t in trials]  # the grid's order
        studydir.write_results(study, root, states)
    if layout == "parquet":
        shutil.rmtree(root / studydir.TRIALS)
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
    """Write a study directory through the runner's writers (``write_trials``) and return its path.

    Trials are the product of ``seeds x block_sizes x widths x samples`` (seed slowest), cut to
    ``n_trials`` when given (seeds continue past ``seeds`` to reach it). ``failed`` / ``nan_probe``
    are trial indices that fail / finish without probe results. ``layout``: ``"parquet"`` writes
    results.parquet + curves.parquet, ``"trials"`` only ``trials/<hash>/`` (a study mid-run), ``"both"``
    both. ``probe_points``: fractions of each trial's budget at which its checkpoints were probed
    (linear and attentive; the end is always included), written as the trials' probe rows and
    probes.parquet: top-1 rises along pretraining, faster for larger k.
    """
    if layout not in ("parquet", "trials", "both"):
        raise ValueError(f"layout={layout!r} is not allowed (allowed: 'parquet', 'trials', 'both')")
    rng = np.random.default_rng(rng_seed)
    base = base or {"model.block_size": 4, "model.width": widths[0], "pretrain.samples": samples[-1]}
    axes, combos = _grid(block_sizes, widths, samples, seeds, n_trials)
    failed_set, nan_set = set(failed), set(nan_probe)
    trials = []
    for i, (seed, k, width, n_samples) in enumerate(combos):
        trial = _trial(name, i, seed, k, width, n_samples, depth, noise, rng, ok=i not in failed_set,
                       probed=i not in nan_set, n_curve_rows=n_curve_rows)
        swept = trial.pop("swept")
        trial["params"] = {key: swept[key] for key in _SWEPT if key in axes}
        trials.append(trial)
    if probe_points:  # after every trial's truth, so the draws above do not depend on the probes asked for
        for trial in trials:
            if trial.get("error") is None:
                trial["probe_rows"] = _probe_rows(trial["result"], probe_points, rng)
    return write_trials(path, name=name, axes=axes, base=base, trials=trials, layout=layout, write_spec=write_spec,
                        description="synthetic study for reports")


_SWEPT = ("model.block_size", "model.width", "pretrain.samples")  # the keys make_study can sweep


def _grid(block_sizes: Sequence[int], widths: Sequence[int], samples: Sequence[int], seeds: Sequence[int],
          n_trials: int | None) -> tuple[dict[str, list[Any]], list[tuple[int, int, int, int]]]:
    """The axes (a key swept only when it has several values; seeds as a ``seed`` axis) and the trials'
    (seed, k, width, samples), seed slowest, cut to ``n_trials``."""
    axes: dict[str, list[Any]] = {}
    for key, values in zip(_SWEPT, (block_sizes, widths, samples), strict=True):
        if len(values) > 1:
            axes[key] = list(values)
    per_seed = len(block_sizes) * len(widths) * len(samples)
    total = n_trials if n_trials is not None else per_seed * len(seeds)
    seed_values = list(seeds) + list(range(max(seeds) + 1, max(seeds) + 1 + math.ceil(total / per_seed)))
    if n_trials is not None or len(seeds) > 1:
        axes["seed"] = seed_values[: math.ceil(total / per_seed)]
    return axes, list(itertools.islice(itertools.product(seed_values, block_sizes, widths, samples), total))


def _trial(name: str, i: int, seed: int, k: int, width: int, n_samples: int, depth: int, noise: float,
           rng: np.random.Generator, *, ok: bool, probed: bool, n_curve_rows: int) -> dict[str, Any]:
    """One trial from the known truth: its result row (or error) and its pretraining curve."""
    law = TRUE_LAW
    chash = _config_hash({"model.block_size": k, "model.width": width, "pretrain.samples": n_samples, "seed": seed,
                          "model.depth": depth})
    trial_id = f"{name}_{i:05d}"
    n_params = _n_params(width, depth)
    loss = (law["E"] + law["A"] / n_params ** law["alpha"] + law["B"] / n_samples ** law["beta"]
            + BLOCK_EFFECT.get(k, 0.03)) * math.exp(rng.normal(0.0, noise))
    top1 = min(0.98, max(0.05, 1.05 - 0.6 * loss - 0.01 * abs(math.log2(k) - 2)))
    lin = top1 + rng.normal(0.0, 0.005)
    att = min(0.99, top1 + 0.03 + rng.normal(0.0, 0.005))
    seen_at_end = n_samples if ok else n_samples // 3
    result = {"config_hash": chash, "seed": seed, "block_size": k, "width": width, "depth": depth,
              "n_params": n_params, "n_params_encoder": int(n_params * 0.7), "flops_per_image": 6 * n_params * TOKENS,
              "samples_seen": seen_at_end, "train_loss": loss, "val_loss": loss * 1.01,
              "linear_top1": lin if probed else float("nan"), "attentive_top1": att if probed else float("nan"),
              "linear_best_lr": 1e-3, "attentive_best_lr": 3e-4, "wall_s": 10.0 + n_samples / 1000}
    batch = 128
    steps = np.arange(1, n_curve_rows + 1) * max(1, n_samples // batch // n_curve_rows)
    seen = np.linspace(n_samples / n_curve_rows, seen_at_end, n_curve_rows).round()
    curve = np.maximum(loss * (seen / seen[-1]) ** -0.15 * (1 + 0.02 * rng.standard_normal(n_curve_rows)), 1e-3)
    lrs = 1e-3 * np.cos(np.linspace(0, np.pi / 2, n_curve_rows))
    walls = np.linspace(0.1, result["wall_s"], n_curve_rows)
    rows = [{"step": int(st), "samples_seen": int(sn), "loss": float(lo), "lr": float(lr), "wall_s": float(w)}
            for st, sn, lo, lr, w in zip(steps, seen, curve, lrs, walls, strict=True)]
    trial: dict[str, Any] = {"config_hash": chash, "trial_id": trial_id, "seed": seed, "curve": rows,
                             "swept": {"model.block_size": k, "model.width": width, "pretrain.samples": n_samples}}
    if ok:
        trial["result"] = result
    else:
        trial["error"] = f"RuntimeError: non-finite loss at step {17 + i} (trial {trial_id})"
    return trial


def _probe_rows(result: dict[str, Any], probe_points: Sequence[float], rng: np.random.Generator
                ) -> list[dict[str, Any]]:
    """Probe rows at each fraction of the budget (and its end): top-1 rises along pretraining, faster for
    larger k; the trial's result names them by its probe_hash."""
    speed = {1: 1.0, 2: 1.6, 4: 2.2, 8: 1.2}.get(result["block_size"], 1.0)
    out = []
    for f in sorted({*probe_points, 1.0}):
        for kind in ("linear", "attentive"):
            end = result[f"{kind}_top1"]
            if end is None or not math.isfinite(end):
                continue
            top1 = end - 0.25 * (1 - min(1.0, f * speed)) ** 2 + rng.normal(0.0, 0.002)
            out.append({"samples": int(round(f * result["samples_seen"])), "dataset": "fashion-mnist",
                        "kind": kind, "top1": top1, "best_lr": 1e-3, "best_val_top1": top1,
                        "still_improving": False})
    result["probe_hash"] = f"p{result['config_hash'][:11]}"
    return out
