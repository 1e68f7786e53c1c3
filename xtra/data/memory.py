"""The small sets in memory: a :class:`Dataset` of three :class:`Split` s of float32 images
``(N, C, H, W)`` at the model's resolution and channel count (28 px sets zero-padded to 32, others
resized; gray repeated to RGB, RGB turned to luminance), normalized with per-channel statistics of
the train split (taken before any ``limit_train`` cap); memoized by ``load_dataset``. A path-based
collection loads as lazy splits instead (``lazy.LazyImages``), for probing.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xtra.config import DataConfig
from xtra.data import collection, decode, lazy, splitting, transforms
from xtra.data.collection import is_path_collection, open_collection
from xtra.data.listing import ConcatListing
from xtra.data.readers import RawSet, read_cifar, read_digits, read_idx_set, read_synthetic
from xtra.data.registry import locate, resolve_hflip
from xtra.data.sets import dataset_spec
from xtra.data.splitting import carve


@dataclass(frozen=True, eq=False)  # compared by identity: tensors have no single truth value
class Split:
    """One split in memory. Treat the tensors as read-only: datasets are shared (memoized)."""

    images: torch.Tensor  # (N, C, H, W) float32, normalized; for imagefolder:/wds: a lazy.LazyImages
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset in memory, memoized by ``load_dataset``: share it, don't modify it."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    hflip: bool  # whether a horizontal flip is a valid augmentation for this data
    source: str  # where it was loaded from: a path, "scikit-learn bundled" or "synthetic"
    class_names: tuple[str, ...] = ()  # where the source names them


_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's "L" conversion


def _stamp(name: str, where: str) -> tuple:
    """(file, size, mtime) of a located set's files, so memoized data follows changes on disk."""
    if is_path_collection(name):
        return (open_collection(name).fingerprint,)
    if dataset_spec(name).kind not in ("idx", "cifar"):
        return ()
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                            for e in os.scandir(where) if e.is_file()))
    except OSError:
        return ()


@functools.lru_cache(maxsize=4)
def _raw(name: str, where: str, stamp: tuple, synthetic_size: int, img_size: int, channels: int) -> RawSet:
    """Decoded source arrays; shared by every split/resolution asked of the same files."""
    spec = dataset_spec(name)
    if spec.kind == "idx":
        return read_idx_set(spec, Path(where))
    if spec.kind == "cifar":
        return read_cifar(spec, Path(where))
    if spec.kind == "digits":
        return read_digits()
    return read_synthetic(synthetic_size)


def _pad_margin(h: int, w: int, size: int) -> int | None:
    """MNIST-style sets (square, smaller by an even margin of at most 8 px, e.g. 28 -> 32) are
    zero-padded by this many pixels per side instead of resized."""
    d = size - h
    return d // 2 if h == w and 0 < d <= 8 and d % 2 == 0 else None


def _prepare(x: np.ndarray, img_size: int, channels: int) -> torch.Tensor:
    """Raw (N, c, h, w) uint8 or [0, 1] floats -> a fresh float32 (N, c', S, S) in [0, 1], where c' is
    ``channels``, or 1 for a gray source that is repeated to RGB later (after normalizing, which is
    cheaper on one channel). Never a view of the cached raw arrays."""
    n, c, h, w = x.shape
    if c not in (1, 3) or channels not in (1, 3):
        raise ValueError(f"cannot convert {c}-channel images to {channels} channels")
    x = np.ascontiguousarray(x)
    src = torch.from_numpy(x if x.flags.writeable else x.copy())  # only read, but torch wants writable
    scale = 1 / 255 if src.dtype == torch.uint8 else 1.0
    pad = _pad_margin(h, w, img_size)
    if c == 3 and channels == 1:
        # (N, 1, h, w) luminance, ITU-R BT.601 like Pillow's "L"
        out = (src.float() * torch.tensor(_LUMA).mul(scale).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        c, src, scale = 1, out, 1.0
    if pad is not None:  # one pass: copy (and convert) into the middle of a zero canvas
        out = torch.zeros(n, c, img_size, img_size)
        out[:, :, pad:pad + h, pad:pad + w] = src
    else:
        out = src.to(torch.float32, copy=True)
    if scale != 1.0:
        out.mul_(scale)
    if pad is None and (h, w) != (img_size, img_size):
        shrink = h > img_size or w > img_size
        out = torch.cat([F.interpolate(chunk, size=(img_size, img_size), mode="bilinear", align_corners=False,
                                       antialias=shrink) for chunk in out.split(4096)]).clamp_(0, 1)
    return out


@functools.lru_cache(maxsize=4)
def _load(name: str, where: str, stamp: tuple, val_size: int, val_fraction: float, split_seed: int,
          limit_train: int, synthetic_size: int, hflip: bool, img_size: int, channels: int, skip_bad: bool,
          workers: int) -> Dataset:
    if is_path_collection(name):
        return _load_collection(DataConfig(name=name, val_size=val_size, val_fraction=val_fraction,
                                           split_seed=split_seed, limit_train=limit_train, skip_bad=skip_bad,
                                           workers=workers), where, hflip, img_size, channels)
    raw = _raw(name, where, stamp, synthetic_size, 0, 0)
    pool, val_idx = carve(len(raw.train_y), DataConfig(val_size=val_size, val_fraction=val_fraction,
                                                       split_seed=split_seed))
    train_idx = np.sort(pool)
    train_x = _prepare(raw.train_x[train_idx], img_size, channels)  # (N, c', S, S) in [0, 1]
    # Per-channel statistics of the whole train split, before any cap: limit_train changes how many
    # images a trial sees, never how they are normalized.
    var, mean = torch.var_mean(train_x, dim=(0, 2, 3))
    if limit_train and limit_train < len(pool):
        keep = np.sort(pool[:limit_train])  # a seeded random subset, in file order
        train_x = train_x[torch.from_numpy(np.searchsorted(train_idx, keep))]
        train_idx = keep
    val_x = _prepare(raw.train_x[val_idx], img_size, channels)
    test_x = _prepare(raw.test_x, img_size, channels)
    labels = torch.from_numpy(raw.train_y)
    std = var.sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    m, s = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    train_x, val_x, test_x = (x.sub_(m).div_(s).expand(-1, channels, -1, -1).contiguous()
                              for x in (train_x, val_x, test_x))  # gray -> RGB by repeat
    reps = channels // len(mean)
    return Dataset(
        name=name,
        train=Split(train_x, labels[torch.from_numpy(train_idx)]),
        val=Split(val_x, labels[torch.from_numpy(val_idx)]),
        test=Split(test_x, torch.from_numpy(raw.test_y.copy())),
        num_classes=raw.num_classes,
        mean=tuple(float(v) for v in mean) * reps,
        std=tuple(float(v) for v in std) * reps,
        hflip=hflip,
        source=where,
        class_names=raw.class_names,
    )


def load_dataset(cfg: DataConfig, img_size: int, channels: int) -> Dataset:
    """The dataset at ``img_size`` x ``img_size`` with ``channels`` channels, normalized with its
    train statistics. Memoized: the same arguments (and the same files) give the same object."""
    if img_size < 1:
        raise ValueError(f"img_size={img_size} must be >= 1")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels} is not supported (allowed: 1, 3)")
    where = locate(cfg)
    path_based = is_path_collection(cfg.name)
    return _load(cfg.name, where, _stamp(cfg.name, where), cfg.val_size, cfg.val_fraction, cfg.split_seed,
                 cfg.limit_train, cfg.synthetic_size if cfg.name == "synthetic" else 0, resolve_hflip(cfg), img_size,
                 channels, cfg.skip_bad and path_based, cfg.workers if path_based else 0)


def _load_collection(cfg: DataConfig, where: str, hflip: bool, img_size: int, channels: int) -> Dataset:
    """A path-based collection's splits for probing (the pretraining loop streams instead): lazy
    images (``lazy.LazyImages``) that decode on demand with the evaluation transform in loader
    workers, normalized with ImageNet statistics, so memory does not grow with the number of images;
    labels in memory (8 bytes per image). An unreadable file stops with one line when it is read, or
    with ``skip_bad`` reads as the mean colour (counted in ``decoder.skipped_bad``)."""
    parts = splitting.splits(cfg)
    splits = [parts.train, parts.val, parts.test]
    decoder = lazy.ProbeDecoder(ConcatListing(splits), img_size, channels, cfg.skip_bad,
                                  decode.resolve_workers(cfg.workers))
    starts = np.cumsum([0] + [len(part) for part in splits])
    train, val, test = (Split(lazy.LazyImages(decoder, np.arange(a, b)), torch.from_numpy(part.labels.copy()))
                        for part, a, b in zip(splits, starts[:-1].tolist(), starts[1:].tolist()))
    mean, std = transforms.natural_stats(channels)
    return Dataset(name=cfg.name, train=train, val=val, test=test,
                   num_classes=len(parts.collection.classes), mean=mean, std=std, hflip=hflip, source=where,
                   class_names=parts.collection.classes)


def clear_cache() -> None:
    """Forget memoized datasets (e.g. after files changed on disk)."""
    _load.cache_clear()
    _raw.cache_clear()
    splitting.collection_splits.cache_clear()
    collection.clear()
