"""`probe()`: every kind, every lr (or L2 strength) of a frozen encoder on a dataset, the best chosen on
val, the test top-1 of that head only."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from xtra.config import DataConfig, ModelConfig, ProbeConfig
from xtra.data import Split
from xtra.model import Encoder
from xtra.probe.augment import augmenter
from xtra.probe.engine import evaluate, fit_linear_lbfgs, right_per_image, train_heads
from xtra.probe.features import Source, Whitening, build_caches, cache_mode
from xtra.probe.heads import make_head, protocol
from xtra.probe.schedule import check_epochs, steps_per_epoch, still_improving

Log = Callable[[str], None]


def check_fits(model_cfg: ModelConfig, dataset, cfg: ProbeConfig | None = None) -> None:
    """One-line ValueError unless the dataset's images fit the encoder and no split is empty."""
    want = (model_cfg.channels, model_cfg.img_size, model_cfg.img_size)
    for split_name in ("train", "val", "test"):
        split = getattr(dataset, split_name)
        got = tuple(split.images.shape[1:])
        if got != want:
            raise ValueError(f"dataset {dataset.name!r} {split_name} images are {_shape_words(got)} but the encoder "
                             f"takes {_shape_words(want)}; load it with load_dataset(data_cfg, img_size="
                             f"{model_cfg.img_size}, channels={model_cfg.channels})")
        if len(split) == 0:
            raise ValueError(f"dataset {dataset.name!r} has an empty {split_name} split")


def _shape_words(shape: tuple) -> str:
    if len(shape) != 3:
        return f"shaped {shape}"
    c, h, w = shape
    return f"{c}-channel {h}x{w}"


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def train_probe(kind: str, encoder: Encoder, dataset, cfg: ProbeConfig, seed: int, *,
                data_cfg: DataConfig | None = None, cache_dir: Path | None = None, progress: bool = False,
                log: Log | None = None) -> tuple[list[nn.Module], dict[str, Any]]:
    """Train one head per lr in cfg.lrs on dataset.train (the encoder must be in eval mode).
    Returns (heads, info): info holds "val_top1" {lr: acc}, "best_lr", "best_index", "cache"."""
    heads, info, _ = _run_kind(kind, encoder, dataset, cfg, seed, data_cfg=data_cfg, cache_dir=cache_dir,
                               progress=progress, log=log, evaluate_test=False)
    return heads, info


def train_adamw(kind: str, heads: list[nn.Module], lrs: tuple[float, ...], epochs: int, train: Source, val: Source,
                dataset, cfg: ProbeConfig, seed: int, bar: _ProbeBar | None = None
                ) -> tuple[list[float], dict[int, list[float]], list[int]]:
    """Train head i with lr i for `epochs` epochs of the cfg.epochs schedule (`train_heads`: fewer is the
    same head stopped at a schedule that many epochs long). Returns (the val top-1 of every head as
    returned, {epoch: val top-1 of every head} at the scored epochs, the epoch each returned head is
    from). With cfg.select_epoch every head is scored on val after every epoch and returned at its best
    epoch (ties: the earliest), else at its last, scored at `check_epochs`."""
    marks = set(range(1, epochs + 1)) if cfg.select_epoch else set(check_epochs(epochs))
    curves: dict[int, list[float]] = {}
    best_acc, at_epoch = [-1.0] * len(heads), [epochs] * len(heads)
    states: list[dict[str, torch.Tensor] | None] = [None] * len(heads)

    def on_epoch(epoch: int, step: int) -> None:
        if bar is None and epoch + 1 not in marks:
            return
        accs = evaluate(heads, val, dataset.val.labels, cfg.batch_size)
        if epoch + 1 in marks:
            curves[epoch + 1] = accs
        for i, acc in enumerate(accs):
            if cfg.select_epoch and acc > best_acc[i]:  # a copy of a small head, kept on its device
                best_acc[i], at_epoch[i] = acc, epoch + 1
                states[i] = {k: v.detach().clone() for k, v in heads[i].state_dict().items()}
        if bar is not None:
            chosen = int(np.argmax(accs))
            bar.update(step, epoch + 1, accs[chosen], lrs[chosen])

    train_heads(kind, heads, lrs, train, dataset.train.labels, cfg, seed, on_epoch, epochs=[epochs] * len(heads))
    if not cfg.select_epoch:
        return curves[epochs], curves, at_epoch
    for head, state in zip(heads, states):
        assert state is not None
        head.load_state_dict(state)
    return best_acc, curves, at_epoch


def _run_kind(kind: str, encoder: Encoder, dataset, cfg: ProbeConfig, seed: int, *, data_cfg: DataConfig | None,
              cache_dir: Path | None, progress: bool, log: Log | None, evaluate_test: bool,
              shared: dict[str, dict[str, Any]] | None = None):
    """`shared`: {split: {kind: cache}} built by `probe` in one encoder pass for all kinds."""
    model_cfg = encoder.cfg
    device = device_of(encoder)
    n_all = len(dataset.train) + len(dataset.val) + len(dataset.test)
    mode = cache_mode(kind, cfg, n_all, model_cfg)
    prebuilt = {split: caches[kind] for split, caches in (shared or {}).items() if kind in caches}
    if mode == "disk" and cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    scratch = (Path(tempfile.mkdtemp(prefix=f".probe-{kind}-", dir=cache_dir))
               if mode == "disk" and not prebuilt else None)
    t0 = time.perf_counter()
    try:
        augment = augmenter(cfg, dataset, seed, kind, device) if cfg.augment else None
        train = Source(encoder, dataset.train.images, kind, cfg, device, mode, scratch, "train", augment,
                        prebuilt.get("train"))
        val = Source(encoder, dataset.val.images, kind, cfg, device, mode, scratch, "val", None, prebuilt.get("val"))
        # the attentive head trains on whitened tokens (a preconditioner), folded back into the official head
        whitening = Whitening(train) if kind == "attentive" and cfg.attentive_whiten else None
        if whitening is not None:
            whitening.apply_(train, val)
        t_cache = time.perf_counter() - t0
        lbfgs = kind == "linear" and cfg.linear_solver == "lbfgs"
        grid = cfg.linear_l2 if lbfgs else cfg.lrs  # one head per value, the best chosen on val
        heads = [make_head(kind, model_cfg, dataset.num_classes, cfg, seed).to(device) for _ in grid]
        # The convergence check: the chosen head against its twin (the same lr, init and shuffles), trained
        # once the lr is chosen, on the schedule doubled (select_epoch; both kept at their best val epoch) or
        # halved: a probe whose longer schedule beat the shorter one on val is flagged as still improving
        twin_epochs = (2 * cfg.epochs if cfg.select_epoch else cfg.epochs // 2) if not lbfgs and cfg.epochs >= 2 else 0
        shape = protocol(kind, model_cfg, cfg)
        if log:
            log(f"{kind} probe: {len(heads)} heads ("
                + (f"L-BFGS, l2 {', '.join(f'{v:g}' for v in grid)}" if lbfgs
                   else f"lrs {', '.join(f'{lr:g}' for lr in cfg.lrs)}") + f"), cache {mode}, "
                f"{len(train)} train / {len(val)} val images, {cfg.features} features"
                + (f", mean of the last {shape['layers']} blocks, {shape['heads']} attention heads"
                   + (f" (clamped from {cfg.attentive_heads} to divide width {model_cfg.width})"
                      if shape["heads"] != cfg.attentive_heads else "") if kind == "attentive" else ""))
        bar = _ProbeBar(kind, cfg.epochs * steps_per_epoch(len(train), cfg.batch_size), cfg) if progress else None
        try:
            if lbfgs:
                fit_linear_lbfgs(heads, grid, train, dataset.train.labels, max_iter=cfg.linear_max_iter)
                val_acc = evaluate(heads, val, dataset.val.labels, cfg.batch_size)
                curves, at_epoch = {cfg.epochs: val_acc}, [None] * len(heads)
            else:
                val_acc, curves, at_epoch = train_adamw(kind, heads, cfg.lrs, cfg.epochs, train, val, dataset, cfg,
                                                        seed, bar)
        finally:
            if bar is not None:
                bar.stop()
        best = int(np.argmax(val_acc))  # ties: the first value listed
        improving, twin_val = None, None
        if twin_epochs:  # the chosen head against its twin, image by image: the longer against the shorter
            twin = make_head(kind, model_cfg, dataset.num_classes, cfg, seed).to(device)
            (twin_val,), _, _ = train_adamw(kind, [twin], (cfg.lrs[best],), twin_epochs, train, val, dataset, cfg, seed)
            right = [right_per_image(h, val, dataset.val.labels, cfg.batch_size) for h in (heads[best], twin)]
            improving = still_improving(*(right[::-1] if twin_epochs > cfg.epochs else right))
        curve = {epoch: accs[best] for epoch, accs in curves.items()}
        info: dict[str, Any] = {"val_top1": {v: acc for v, acc in zip(grid, val_acc)},
                                "best_lr": None if lbfgs else cfg.lrs[best], "best_l2": grid[best] if lbfgs else None,
                                "best_index": best, "cache": mode, "cache_s": t_cache, "val_curve": curve,
                                "twin_epochs": twin_epochs or None, "twin_val_top1": twin_val,
                                "best_epoch": at_epoch[best],
                                "still_improving": improving,
                                "lr_at_edge": len(grid) > 1 and grid[best] in (min(grid), max(grid)),
                                "solver": "lbfgs" if lbfgs else "adamw", **shape}
        if whitening is not None:  # every head returned reads the raw tokens, as the official one (so the
            for head in heads:  # test split is scored raw: never whitened)
                whitening.fold(head)
        test_acc = None
        if evaluate_test:  # only the head chosen on val ever sees the test split
            test = Source(encoder, dataset.test.images, kind, cfg, device, mode, scratch, "test", None,
                          prebuilt.get("test"))
            test_acc = evaluate([heads[best]], test, dataset.test.labels, cfg.batch_size)[0]
        info["wall_s"] = time.perf_counter() - t0
        return heads, info, test_acc
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def limit_train(dataset, limit: int):
    """A fixed subset of the train split (seeded independently of the trial), so every trial of a
    study probes on the same images."""
    if not limit or limit >= len(dataset.train):
        return dataset
    keep = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(0))[:limit].sort().values
    images = dataset.train.images
    images = images.subset(keep) if getattr(images, "lazy", False) else images[keep]  # lazy stays lazy
    return dataclasses.replace(dataset, train=Split(images, dataset.train.labels[keep]))


def probe(encoder: Encoder, dataset, cfg: ProbeConfig, seed: int, progress: bool = False,
          cache_dir: Path | None = None, *, data_cfg: DataConfig | None = None, log: Log | None = None) -> dict:
    """Probe the frozen `encoder` on `dataset` for every kind in cfg.kinds.

    Returns {kind: {"val_top1": {lr: acc}, "best_lr": lr, "best_val_top1": acc, "test_top1": acc (best lr only),
    "epochs": n, "cache": memory|disk|off, "val_curve": {epoch: val top-1 of the chosen lr},
    "twin_epochs": 2n with cfg.select_epoch else n // 2, "twin_val_top1": val top-1 of the chosen lr's head on
    that schedule (the same init and shuffles),
    "best_epoch": the epoch the chosen head is from (its last, or its best on val with cfg.select_epoch; None
    for L-BFGS), "encode_s": seconds of the one encoder pass shared by both kinds (None when not shared),
    "head_s": seconds of this kind after it (its own caching if any, whitening, training, scoring),
    "still_improving": bool | None (doubling the schedule raised val top-1 by more than IMPROVING_TOL,
    significantly: `still_improving`; None where nothing was trained in epochs: L-BFGS, a 1-epoch probe),
    "lr_at_edge": the chosen lr is the grid's smallest or largest (the grid may not hold the best lr: widen
    it), "layers": blocks averaged, "heads": attention heads (None for linear), "features": raw|normed}};
    accuracies are fractions in [0, 1]. `data_cfg` is unused
    (kept for callers; the augmentation's parameters are in `cfg`)."""
    check_fits(encoder.cfg, dataset, cfg)
    dataset = limit_train(dataset, cfg.limit_train)
    was_training = encoder.training
    encoder.eval()
    results: dict[str, Any] = {}
    n_all = len(dataset.train) + len(dataset.val) + len(dataset.test)
    modes = {kind: cache_mode(kind, cfg, n_all, encoder.cfg) for kind in cfg.kinds}
    modes = {kind: mode for kind, mode in modes.items() if mode != "off"}
    scratch = None
    try:
        shared, t0 = None, time.perf_counter()
        if len(modes) > 1:  # both probes cached: one encoder pass over each split feeds both
            if "disk" in modes.values():
                if cache_dir is not None:
                    Path(cache_dir).mkdir(parents=True, exist_ok=True)
                scratch = Path(tempfile.mkdtemp(prefix=".probe-shared-", dir=cache_dir))
            device = device_of(encoder)
            shared = {split: build_caches(encoder, getattr(dataset, split).images, modes, cfg, device, scratch, split)
                      for split in ("train", "val", "test")}
        encode_s = time.perf_counter() - t0 if shared is not None else None
        for kind in cfg.kinds:
            _, info, test_acc = _run_kind(kind, encoder, dataset, cfg, seed, data_cfg=data_cfg, cache_dir=cache_dir,
                                          progress=progress, log=log, evaluate_test=True, shared=shared)
            results[kind] = {"val_top1": info["val_top1"], "best_lr": info["best_lr"], "best_l2": info["best_l2"],
                             "best_val_top1": max(info["val_top1"].values()), "solver": info["solver"],
                             "test_top1": test_acc,
                             "epochs": cfg.epochs, "cache": info["cache"], "val_curve": info["val_curve"],
                             "still_improving": info["still_improving"], "lr_at_edge": info["lr_at_edge"],
                             "twin_epochs": info["twin_epochs"], "twin_val_top1": info["twin_val_top1"],
                             "best_epoch": info["best_epoch"], "encode_s": encode_s, "head_s": info["wall_s"],
                             "layers": info["layers"],
                             "heads": info["heads"], "features": cfg.features}
    finally:
        encoder.train(was_training)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


class _ProbeBar:
    def __init__(self, kind: str, total: int, cfg: ProbeConfig):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"{kind} probe"), TextColumn("epoch {task.fields[epoch]}/" + str(cfg.epochs)), BarColumn(),
            MofNCompleteColumn(), TextColumn("best val top-1 {task.fields[acc]} (lr {task.fields[lr]})"),
            TimeRemainingColumn())
        self.task = self.progress.add_task(kind, total=total, epoch=0, acc="-", lr="-")
        self.progress.start()

    def update(self, step: int, epoch: int, acc: float, lr: float) -> None:
        self.progress.update(self.task, completed=step, epoch=epoch, acc=f"{acc:.4f}", lr=f"{lr:g}")

    def stop(self) -> None:
        self.progress.stop()
