"""Probing checkpoints: `probe_run` (a run directory in, probe.json out) and `probe_checkpoints` (a
trial's checkpoints x the probe datasets x the kinds, long-format rows)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from xtra import trialdir as td
from xtra.checkpoint import CHECKPOINT, CheckpointError, atomic_write_json, load_checkpoint
from xtra.config import DataConfig, ModelConfig, ProbeConfig
from xtra.data import load_dataset, locate
from xtra.data.sampler import step_seed
from xtra.model import XTRA, Encoder
from xtra.overrides import override
from xtra.pretrain import resolve_device
from xtra.probe.select import Log, check_fits, limit_train, probe

PROBE_JSON = td.PROBE
PROBE_RANDOM_JSON = td.PROBE_RANDOM


def run_configs(state: dict, path: Path) -> tuple[ModelConfig, DataConfig, int]:
    """(model config, data config, seed) stored in a checkpoint; CheckpointError if unusable."""
    stored = state.get("config")
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        raise CheckpointError(f"{path}: checkpoint has no stored model config "
                              "(expected one written by `xtra pretrain`)")
    try:
        model_cfg = override(ModelConfig(), stored["model"])
        data_cfg = override(DataConfig(), stored.get("data") or {})
    except ValueError as err:
        raise CheckpointError(f"{path}: stored config is not valid for this version ({err})") from None
    return model_cfg, data_cfg, int(stored.get("seed", 0))


def _check_expected(model_cfg: ModelConfig, expect: ModelConfig, path: Path) -> None:
    if model_cfg == expect:
        return
    a, b = dataclasses.asdict(model_cfg), dataclasses.asdict(expect)
    diff = [f"model.{k} (checkpoint {a[k]!r}, expected {b[k]!r})" for k in sorted(a) if a[k] != b[k]]
    raise CheckpointError(f"{path}: checkpoint was written for a different model config (differs in: "
                          f"{', '.join(diff)})")


def load_encoder(state: dict, model_cfg: ModelConfig, path: Path) -> Encoder:
    """The pretrained encoder from a checkpoint's XTRA state dict."""
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    encoder = Encoder(model_cfg)
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: encoder weights do not fit the stored model config ({first[:200]})") from None
    return encoder


def random_encoder(model_cfg: ModelConfig, seed: int) -> Encoder:
    """An untrained encoder initialized exactly as `pretrain(..., seed=seed)` starts."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(step_seed(seed, -1))
        return XTRA(model_cfg).encoder


def probe_run(run_dir: Path, data_cfg: DataConfig | None = None, cfg: ProbeConfig = ProbeConfig(), seed: int = 0,
              random_init: bool = False, *, expect_model: ModelConfig | None = None, dataset=None,
              data_name: str | None = None, device: str = "auto", progress: bool = False,
              cache_dir: Path | None = None, log: Log | None = None) -> dict:
    """Probe the encoder in `run_dir/checkpoint.pt` and write `run_dir/probe.json` atomically
    (`probe-random.json` with random_init: an untrained encoder of the same config, initialized
    as the run's pretraining started, the floor for every report).

    `data_cfg` defaults to the run's own data config (`data_name`: the run's data config with
    another dataset name); `dataset` (an already loaded `xtra.data.Dataset`) replaces loading.
    Every input is checked before any compute: a missing or foreign checkpoint (CheckpointError),
    a model config other than `expect_model`, a dataset that is missing or whose images do not
    fit the encoder (ValueError, one line each).
    Returns probe()'s dict plus "meta"."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if sum(x is not None for x in (data_cfg, dataset, data_name)) > 1:
        raise ValueError("give probe_run at most one of data_cfg, data_name and dataset")
    if random_init and not path.is_file() and expect_model is not None:
        state, model_cfg, run_data, run_seed, samples = None, expect_model, None, seed, 0
    else:
        state = load_checkpoint(path)
        model_cfg, run_data, run_seed = run_configs(state, path)
        samples = int(state.get("samples_seen", 0))
        if expect_model is not None:
            _check_expected(model_cfg, expect_model, path)
    torch_device = resolve_device(device)
    if dataset is None:
        data_cfg = data_cfg or run_data
        if data_cfg is None:
            raise ValueError("random_init without a checkpoint needs data_cfg (which dataset to probe on)")
        if data_name is not None:
            data_cfg = dataclasses.replace(data_cfg, name=data_name)
        locate(data_cfg)  # one-line DatasetNotFound before anything else is loaded
        dataset = load_dataset(data_cfg, model_cfg.img_size, model_cfg.channels)
    check_fits(model_cfg, dataset, cfg)

    if random_init:
        encoder = random_encoder(model_cfg, run_seed)
    else:
        assert state is not None
        encoder = load_encoder(state, model_cfg, path)
    del state
    encoder = encoder.to(torch_device).eval().requires_grad_(False)
    t0 = time.perf_counter()
    results = probe(encoder, dataset, cfg, seed, progress=progress, cache_dir=cache_dir, data_cfg=data_cfg, log=log)
    out = run_dir / (PROBE_RANDOM_JSON if random_init else PROBE_JSON)
    results["meta"] = {
        "run_dir": str(run_dir), "checkpoint": str(path), "samples_seen": 0 if random_init else samples,
        "random_init": random_init, "seed": seed, "init_seed": run_seed if random_init else None,
        "data": dataset.name, "n_train": len(dataset.train), "n_val": len(dataset.val), "n_test": len(dataset.test),
        "num_classes": dataset.num_classes, "probe": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg),
        "device": str(torch_device), "wall_s": round(time.perf_counter() - t0, 4), "path": str(out),
    }
    atomic_write_json(out, results)
    return results


# ---------------------------------------------------------------------------------------------
# probe_checkpoints(): a trial's checkpoints x the probe datasets x the kinds, long-format rows


def probe_data_configs(probe_cfg: ProbeConfig, data_cfg: DataConfig, model_cfg: ModelConfig) -> dict[str, DataConfig]:
    """{dataset name: data config} for every probe dataset (`probe.datasets`, or the trial's own
    data), each checked before any work: a missing set, or one whose images cannot be brought to the
    encoder's size and channels, is a one-line ValueError naming `probe.datasets`."""
    names = probe_cfg.datasets or (data_cfg.name,)
    if model_cfg.channels not in (1, 3):
        raise ValueError(f"probe.datasets: the encoder takes {model_cfg.channels}-channel images; probe sets "
                         "can be brought to 1 or 3 channels only (allowed model.channels: 1, 3)")
    out: dict[str, DataConfig] = {}
    for i, name in enumerate(names):
        try:
            cfg = data_cfg if name == data_cfg.name else DataConfig(
                name=name, val_fraction=data_cfg.val_fraction, split_seed=data_cfg.split_seed,
                augment=False, hflip="auto", workers=data_cfg.workers, skip_bad=data_cfg.skip_bad)
            locate(cfg)
        except ValueError as err:  # DatasetNotFound, a bad name, an empty image folder
            raise ValueError(f"probe.datasets[{i}]={name!r}: {err}") from None
        out[name] = cfg
    return out


def _load_probe_set(name: str, data_cfg: DataConfig, model_cfg: ModelConfig, index: int):
    try:
        dataset = load_dataset(data_cfg, model_cfg.img_size, model_cfg.channels)
        check_fits(model_cfg, dataset)
    except ValueError as err:  # e.g. 4-channel files, an empty split
        raise ValueError(f"probe.datasets[{index}]={name!r}: {err}") from None
    return dataset


def probe_checkpoints(paths_by_samples: dict[int, Path | str], data_cfg: DataConfig, probe_cfg: ProbeConfig,
                      seed: int, *, expect_model: ModelConfig | None = None, device: str = "auto",
                      cache_dir: Path | None = None, log: Log | None = None,
                      done: dict[tuple[int, str], list[dict[str, Any]]] | None = None,
                      on_point: Callable[[int, str, list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Probe a trial's checkpoints ({samples seen: checkpoint path}) on every probe dataset: the last
    (largest samples) with every kind of `probe.kinds`, the earlier ones with `probe.along_kinds`.
    Returns long-format rows, one per (samples, dataset, kind), sorted that way:
    {"samples", "dataset", "kind", "top1" (test, the lr chosen on val), "best_lr", "best_val_top1",
    "twin_val_top1" (its twin's on the doubled or halved schedule), "best_epoch", "encode_s", "head_s",
    "still_improving", "lr_at_edge", "epochs", "layers", "heads", "features", "n_train", "n_test", "num_classes",
    "wall_s"}.
    `data_cfg` is the trial's data (its own set is probed with its split settings).

    Every input is checked before any compute: each checkpoint exists and is an xtra checkpoint of
    one model config (`expect_model` if given), each probe dataset is found and fits. Nothing is
    written; the caller stores the rows: `on_point(samples, dataset, rows)` hears each (checkpoint,
    dataset) as it finishes, and `done` ({(samples, dataset): rows}) holds those a resumed call skips."""
    if not paths_by_samples:
        raise ValueError("probe_checkpoints: no checkpoints given (expected {samples_seen: path})")
    states: dict[int, Path] = {}
    model_cfg = expect_model
    for samples, path in sorted(paths_by_samples.items()):
        path = Path(path)
        state = load_checkpoint(path)  # CheckpointError: missing, corrupt, foreign
        cfg_here, _, _ = run_configs(state, path)
        if model_cfg is None:
            model_cfg = cfg_here
        _check_expected(cfg_here, model_cfg, path)
        states[int(samples)] = path
        del state
    assert model_cfg is not None
    sets = probe_data_configs(probe_cfg, data_cfg, model_cfg)
    datasets = {name: _load_probe_set(name, cfg, model_cfg, i) for i, (name, cfg) in enumerate(sets.items())}
    torch_device = resolve_device(device)
    rows: list[dict[str, Any]] = []
    end = max(states)
    # Earlier checkpoints: only `along_kinds` (of `kinds`; all kinds if none of them is listed)
    along = tuple(k for k in probe_cfg.kinds if k in probe_cfg.along_kinds) or probe_cfg.kinds
    done = done or {}
    for samples, path in states.items():
        cfg = probe_cfg if samples == end else dataclasses.replace(probe_cfg, kinds=along)
        todo = [name for name in datasets if (samples, name) not in done]
        encoder = (load_encoder(load_checkpoint(path), model_cfg, path).to(torch_device).eval().requires_grad_(False)
                   if todo else None)
        for name, dataset in datasets.items():
            if name not in todo:
                rows.extend(done[(samples, name)])
                continue
            t0 = time.perf_counter()
            if log:
                log(f"probing the checkpoint at {samples} samples on {name} ({', '.join(cfg.kinds)})")
            result = probe(encoder, dataset, cfg, seed, cache_dir=cache_dir, log=log)
            wall = time.perf_counter() - t0
            point = []
            for kind in cfg.kinds:
                r = result[kind]
                point.append({"samples": samples, "dataset": name, "kind": kind, "top1": r["test_top1"],
                             "best_lr": r["best_lr"], "best_l2": r.get("best_l2"), "solver": r.get("solver"),
                             "best_val_top1": r["best_val_top1"], "twin_val_top1": r["twin_val_top1"],
                             "best_epoch": r.get("best_epoch"), "encode_s": r.get("encode_s"),
                             "head_s": r.get("head_s"),
                             "still_improving": r["still_improving"], "lr_at_edge": r["lr_at_edge"],
                             "epochs": r["epochs"], "layers": r["layers"],
                             "heads": r["heads"], "features": r["features"],
                             "n_train": len(limit_train(dataset, probe_cfg.limit_train).train),
                             "n_test": len(dataset.test), "num_classes": dataset.num_classes,
                             "wall_s": round(wall, 4)})
            rows.extend(point)
            if on_point is not None:
                on_point(samples, name, point)
        del encoder
    return rows
