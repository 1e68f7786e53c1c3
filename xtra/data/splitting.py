"""The train / val / test splits of a path-based collection: val carved by a permutation seeded with
``DataConfig.split_seed`` alone (never the trial seed), so every trial of a study probes on the same
images; a collection without a test split holds out a fixed seeded 20% (``readers.held_out``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from xtra.config import DataConfig
from xtra.data import collection as col
from xtra.data.readers import held_out


@dataclass(frozen=True, eq=False)
class Splits:
    collection: col.Collection
    train: col.Listing
    val: col.Listing
    test: col.Listing
    train_pool: int  # train images before limit_train


def carve(n: int, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train pool, val) indices: a permutation seeded by split_seed alone; val is ``val_size``
    images when set, else ``val_fraction`` of them. The pool keeps the permutation's order."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.split_seed)).numpy()
    n_val = cfg.val_size if cfg.val_size else max(1, int(round(n * cfg.val_fraction)))
    if n - n_val < 1:
        what = f"data.val_size={cfg.val_size}" if cfg.val_size else f"data.val_fraction={cfg.val_fraction}"
        raise ValueError(f"{what} leaves no training images out of {n}")
    return perm[n_val:], np.sort(perm[:n_val])


@functools.lru_cache(maxsize=4)
def collection_splits(name: str, fingerprint: str, val_size: int, val_fraction: float, split_seed: int,
            limit_train: int) -> Splits:
    c = col.open_collection(name)
    train, test = c.train, c.test
    if test is None:
        keep, held = held_out(len(train))
        train, test = train.take(keep), train.take(held)
    cfg = DataConfig(name=name, val_size=val_size, val_fraction=val_fraction, split_seed=split_seed)
    pool, val_idx = carve(len(train), cfg)
    n_pool = len(pool)
    if limit_train and limit_train < len(pool):
        pool = pool[:limit_train]
    return Splits(c, train.take(np.sort(pool)), train.take(val_idx), test, n_pool)


def splits(cfg: DataConfig) -> Splits:
    c = col.open_collection(cfg.name)
    return collection_splits(cfg.name, c.fingerprint, cfg.val_size, cfg.val_fraction, cfg.split_seed, cfg.limit_train)
