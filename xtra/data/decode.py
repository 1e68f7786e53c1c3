"""Decoding in loader workers: a ``torch.utils.data.DataLoader`` whose every item is a whole batch
request, read and transformed by one worker (``transforms``); errors come back as values, one line
each. Used by the pretraining stream (``stream``), the lazy probe splits (``lazy``) and the bench.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from xtra.config import DataConfig
from xtra.data import transforms
from xtra.data.listing import ConcatListing, Listing

PREFETCH = 4  # batches in flight per loader worker


class BatchSet(torch.utils.data.Dataset):
    """Map-style: the index is a whole batch request, (keys, mode); one worker decodes it all.
    Errors come back as values (one line each), never as a worker traceback."""

    def __init__(self, listing: Listing, size: int, channels: int, cfg: DataConfig, hflip: bool, seed: int,
                 augment: bool) -> None:
        self.listing, self.size, self.channels = listing, size, channels
        self.scale, self.ratio, self.hflip = cfg.crop_scale, cfg.crop_ratio, hflip
        self.seed, self.augment, self.skip_bad = seed, augment, cfg.skip_bad
        self.fast = True  # reduced-scale JPEG decode where the crop allows (transforms.train_image)

    def __len__(self) -> int:
        return len(self.listing)

    def __getitem__(self, request: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
        samples, epochs, positions = request
        if self.augment:
            def transform(data: bytes, j: int) -> np.ndarray:
                rng = transforms.sample_rng(self.seed, int(epochs[j]), int(positions[j]))
                return transforms.train_image(data, self.size, self.channels, self.scale, self.ratio, self.hflip,
                                              rng, fast=self.fast)
        else:
            def transform(data: bytes, j: int) -> np.ndarray:
                return transforms.eval_image(data, self.size, self.channels)
        got = decode_batch(self.listing, samples, self.size, self.channels, self.skip_bad, transform)
        if "error" in got:
            return got
        keep, bad, out = got["keep"], got["bad"], got["images"]
        return {"images": torch.from_numpy(out[keep] if len(bad) else out),
                "labels": torch.from_numpy(self.listing.labels[samples][keep]), "bad": bad, "keep": keep}


def decode_batch(listing: Listing, samples: np.ndarray, size: int, channels: int, skip_bad: bool,
            transform) -> dict[str, Any]:
    """(len(samples), C, S, S) uint8 of ``transform(bytes, j)`` per sample; an unreadable one stops with
    one line, or with ``skip_bad`` is left as zeros, named in "bad" and False in "keep"."""
    out = np.zeros((len(samples), channels, size, size), dtype=np.uint8)
    keep = np.ones(len(samples), dtype=bool)
    bad: list[str] = []
    for j, i in enumerate(samples.tolist()):
        try:
            out[j] = transform(listing.read(i), j)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            message = f"{listing.name(i)}: cannot read image ({type(e).__name__}: {e})".replace("\n", " ")
            if not skip_bad:
                return {"error": message + " (set data.skip_bad=true to skip unreadable images)"}
            keep[j] = False
            bad.append(message)
    return {"images": out, "keep": keep, "bad": bad}


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each worker decodes on one core; the trainer keeps the rest


def resolve_workers(requested: int) -> int:
    """data.workers: -1 = auto (the cores this process may use, minus one for the trainer, at most 8)."""
    if requested >= 0:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def as_is(item: dict[str, Any]) -> dict[str, Any]:
    return item


def start_method() -> str:
    """How loader workers start: fork (instant) in a plain process; spawn in a process connected to
    Ray (a trial's worker), whose gRPC threads a forked child would inherit mid-lock (it hangs)."""
    ray = sys.modules.get("ray")
    in_ray = ray is not None and getattr(ray, "is_initialized", lambda: False)()
    return "fork" if sys.platform == "linux" and not in_ray else "spawn"


def batch_loader(dataset: BatchSet, requests, workers: int, pin: bool) -> Iterator[dict[str, Any]]:
    kw: dict[str, Any] = {}
    if workers > 0:
        kw = dict(prefetch_factor=PREFETCH, worker_init_fn=worker_init, multiprocessing_context=start_method())
    loader = torch.utils.data.DataLoader(dataset, sampler=requests, batch_size=None, num_workers=workers,
                                         pin_memory=pin, collate_fn=as_is, **kw)
    return iter(loader)


def decode_all(listing: Listing, size: int, channels: int, cfg: DataConfig,
               workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a listing with the evaluation transform: (N, C, S, S) uint8 and labels (the
    in-memory splits for probing). Unreadable images stop with one line, or are dropped with skip_bad."""
    return decode_splits([listing], size, channels, cfg, workers)[0]


def decode_splits(listings: list[Listing], size: int, channels: int, cfg: DataConfig,
                  workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``decode_all`` of several listings through one loader (its workers start once)."""
    whole = ConcatListing(listings)
    dataset = BatchSet(whole, size, channels, cfg, False, 0, augment=False)
    n, batch = len(whole), 256
    requests = [(np.arange(s, min(s + batch, n)), np.zeros(min(batch, n - s), dtype=np.int64),
                 np.zeros(min(batch, n - s), dtype=np.int64)) for s in range(0, n, batch)]
    images, labels, kept = [], [], []
    for item in batch_loader(dataset, requests, min(workers, len(requests)), False):
        if "error" in item:
            raise ValueError(item["error"])
        images.append(item["images"].numpy())
        labels.append(item["labels"].numpy())
        kept.append(item["keep"])
    x = np.concatenate(images) if images else np.empty((0, channels, size, size), dtype=np.uint8)
    y = np.concatenate(labels) if labels else np.empty(0, dtype=np.int64)
    index = np.cumsum(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)  # rows kept so far
    out, start = [], 0
    for part in listings:
        end = start + len(part)
        lo = int(index[start - 1]) if start else 0
        hi = int(index[end - 1]) if end else 0
        out.append((x[lo:hi], y[lo:hi]))
        start = end
    return out
