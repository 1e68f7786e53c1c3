"""Batches for pretraining: one interface over in-memory sets and streamed path-based collections.

``open_stream(...)`` returns a source with ``n_train``, ``val_images(n)``, ``batch(step, samples_seen,
size)``, ``state()`` / ``restore(state)`` and ``close()``; the loop only ever asks for "the batch at
this position". The data position is ``samples_seen``: epoch = samples_seen // n_train and the offset
in that epoch's permutation (seeded by the trial seed and the epoch), so a resumed run asks for
exactly the batch an uninterrupted one would have seen.

Streamed collections (``imagefolder:`` / ``wds:``): a ``torch.utils.data.DataLoader`` whose sampler
yields, step by step, this rank's rows of the global batch (rank r of N: rows [r*b/N, (r+1)*b/N)), so
ranks read disjoint images and together exactly the images one worker would. Each loader worker
reads, decodes and crops a whole local batch (``transforms.train_image``, seeded per sample by
(seed, epoch, position), so the crop does not depend on who decodes it) and returns uint8; the main
process only converts to float and normalizes with ImageNet statistics. Memory: the listing (a few
bytes per image), one epoch permutation (8 bytes per image) and the prefetched batches.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xtra.config import DataConfig
from xtra.data import collection as col
from xtra.data import transforms

PREFETCH = 4  # batches in flight per loader worker


# ---------------------------------------------------------------------------------------------
# Splits of a path-based collection


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
def _splits(name: str, fingerprint: str, val_size: int, val_fraction: float, split_seed: int,
            limit_train: int) -> Splits:
    from xtra.data import _held_out

    c = col.open_collection(name)
    train, test = c.train, c.test
    if test is None:
        keep, held = _held_out(len(train))
        train, test = train.take(keep), train.take(held)
    cfg = DataConfig(name=name, val_size=val_size, val_fraction=val_fraction, split_seed=split_seed)
    pool, val_idx = carve(len(train), cfg)
    n_pool = len(pool)
    if limit_train and limit_train < len(pool):
        pool = pool[:limit_train]
    return Splits(c, train.take(np.sort(pool)), train.take(val_idx), test, n_pool)


def splits(cfg: DataConfig) -> Splits:
    c = col.open_collection(cfg.name)
    return _splits(cfg.name, c.fingerprint, cfg.val_size, cfg.val_fraction, cfg.split_seed, cfg.limit_train)


# ---------------------------------------------------------------------------------------------
# Decoding in loader workers


class BatchSet(torch.utils.data.Dataset):
    """Map-style: the index is a whole batch request, (keys, mode); one worker decodes it all.
    Errors come back as values (one line each), never as a worker traceback."""

    def __init__(self, listing: col.Listing, size: int, channels: int, cfg: DataConfig, hflip: bool, seed: int,
                 augment: bool) -> None:
        self.listing, self.size, self.channels = listing, size, channels
        self.scale, self.ratio, self.hflip = cfg.crop_scale, cfg.crop_ratio, hflip
        self.seed, self.augment, self.skip_bad = seed, augment, cfg.skip_bad
        self.fast = True  # reduced-scale JPEG decode where the crop allows (transforms.train_image)

    def __len__(self) -> int:
        return len(self.listing)

    def __getitem__(self, request: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
        samples, epochs, positions = request
        out = np.empty((len(samples), self.channels, self.size, self.size), dtype=np.uint8)
        keep = np.ones(len(samples), dtype=bool)
        bad: list[str] = []
        for j, (i, e, p) in enumerate(zip(samples.tolist(), epochs.tolist(), positions.tolist())):
            try:
                data = self.listing.read(i)
                if self.augment:
                    rng = transforms.sample_rng(self.seed, e, p)
                    out[j] = transforms.train_image(data, self.size, self.channels, self.scale, self.ratio,
                                                    self.hflip, rng, fast=self.fast)
                else:
                    out[j] = transforms.eval_image(data, self.size, self.channels)
            except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
                message = f"{self.listing.name(i)}: cannot read image ({type(e).__name__}: {e})".replace("\n", " ")
                if not self.skip_bad:
                    return {"error": message + " (set data.skip_bad=true to skip unreadable images)"}
                keep[j] = False
                bad.append(message)
        return {"images": torch.from_numpy(out[keep] if len(bad) else out),
                "labels": torch.from_numpy(self.listing.labels[samples][keep]), "bad": bad, "keep": keep}


def _worker_init(_: int) -> None:
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


def _as_is(item: dict[str, Any]) -> dict[str, Any]:
    return item


def start_method() -> str:
    """How loader workers start: fork (instant) in a plain process; spawn in a process connected to
    Ray (a trial's worker), whose gRPC threads a forked child would inherit mid-lock (it hangs)."""
    ray = sys.modules.get("ray")
    in_ray = ray is not None and getattr(ray, "is_initialized", lambda: False)()
    return "fork" if sys.platform == "linux" and not in_ray else "spawn"


def _loader(dataset: BatchSet, requests, workers: int, pin: bool) -> Iterator[dict[str, Any]]:
    kw: dict[str, Any] = {}
    if workers > 0:
        kw = dict(prefetch_factor=PREFETCH, worker_init_fn=_worker_init, multiprocessing_context=start_method())
    loader = torch.utils.data.DataLoader(dataset, sampler=requests, batch_size=None, num_workers=workers,
                                         pin_memory=pin, collate_fn=_as_is, **kw)
    return iter(loader)


def decode_all(listing: col.Listing, size: int, channels: int, cfg: DataConfig,
               workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a listing with the evaluation transform: (N, C, S, S) uint8 and labels (the
    in-memory splits for probing). Unreadable images stop with one line, or are dropped with skip_bad."""
    return decode_splits([listing], size, channels, cfg, workers)[0]


def decode_splits(listings: list[col.Listing], size: int, channels: int, cfg: DataConfig,
                  workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``decode_all`` of several listings through one loader (its workers start once)."""
    whole = col.ConcatListing(listings)
    dataset = BatchSet(whole, size, channels, cfg, False, 0, augment=False)
    n, batch = len(whole), 256
    requests = [(np.arange(s, min(s + batch, n)), np.zeros(min(batch, n - s), dtype=np.int64),
                 np.zeros(min(batch, n - s), dtype=np.int64)) for s in range(0, n, batch)]
    images, labels, kept = [], [], []
    for item in _loader(dataset, requests, min(workers, len(requests)), False):
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


# ---------------------------------------------------------------------------------------------
# The sources


def schedule(samples_seen: int, total: int, batch_size: int, share: int) -> Iterator[tuple[int, int]]:
    """(samples_seen, batch) of every step from here to the budget: the loop's own rule (a last,
    smaller batch rounded down to a multiple of workers x accumulate)."""
    while samples_seen < total:
        b = min(batch_size, total - samples_seen)
        b -= b % share
        if b == 0:
            return
        yield samples_seen, b
        samples_seen += b


class _Permutations:
    """The epoch permutations of the stream (one kept at a time: 8 bytes per image)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.perm = n, seed, -1, None

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch != self.epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 7_919 + 0x5EED) % (2**63 - 1))
            self.perm, self.epoch = torch.randperm(self.n, generator=g).numpy(), epoch
        return self.perm

    def positions(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sample index, epoch, position in epoch) of stream positions [start, start + count)."""
        pos = np.arange(start, start + count, dtype=np.int64)
        epochs, offsets = np.divmod(pos, self.n)
        samples = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs).tolist():
            m = epochs == e
            samples[m] = self(int(e))[offsets[m]]
        return samples, epochs, offsets


def stream_requests(n: int, seed: int, rank: int, size: int, plan: Iterator[tuple[int, int]]):
    """This rank's rows of each planned global batch, as BatchSet requests."""
    perms = _Permutations(n, seed)
    for seen, b in plan:
        local = b // size
        yield perms.positions(seen + rank * local, local)


class StreamSource:
    """A path-based collection streamed through loader workers."""

    streamed = True

    def __init__(self, cfg: DataConfig, img_size: int, channels: int, seed: int, rank: int, size: int,
                 device: torch.device, total: int, batch_size: int, share: int) -> None:
        self.cfg, self.img_size, self.channels, self.seed = cfg, img_size, channels, seed
        self.rank, self.size, self.device = rank, size, device
        self.total, self.batch_size, self.share = total, batch_size, share
        self.splits = splits(cfg)
        self.n_train = len(self.splits.train)
        if self.n_train == 0:
            raise ValueError(f"{cfg.name}: no training images left (data.limit_train={cfg.limit_train})")
        from xtra.data import _resolve_hflip

        self.hflip = _resolve_hflip(cfg)
        self.mean, self.std = transforms.natural_stats(channels)
        self.workers = resolve_workers(cfg.workers)
        self.skipped_bad = 0
        self.bad_names: list[str] = []
        self._it: Iterator | None = None
        self._expected: Iterator[tuple[int, int]] = iter(())
        self._m = torch.tensor(self.mean, device=device).view(1, -1, 1, 1) * 255
        self._s = torch.tensor(self.std, device=device).view(1, -1, 1, 1) * 255

    @property
    def describe(self) -> str:
        return (f"{self.n_train} train / {len(self.splits.val)} val / {len(self.splits.test)} test images of "
                f"{self.cfg.name} (streamed by {self.workers} loader workers; normalized with ImageNet mean "
                f"{self.mean} std {self.std})")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images.to(self.device, non_blocking=True).float() - self._m) / self._s

    def val_images(self, n: int) -> torch.Tensor:
        listing = self.splits.val.take(np.arange(min(n, len(self.splits.val))))
        # In this process: starting loader workers (spawned under Ray) costs more than ~1k decodes.
        x, _ = decode_all(listing, self.img_size, self.channels, self.cfg, 0)
        return self.normalize(torch.from_numpy(x))

    def batch(self, step: int, samples_seen: int, batch: int) -> torch.Tensor:
        """This rank's images of the global batch at ``samples_seen`` (normalized, on the device)."""
        if self._it is None:
            # Both walk the plan lazily (a run of 100 ImageNet epochs is 10^8 positions).
            self._expected = schedule(samples_seen, self.total, self.batch_size, self.share)
            dataset = BatchSet(self.splits.train, self.img_size, self.channels, self.cfg, self.hflip, self.seed,
                               augment=self.cfg.augment)
            plan = schedule(samples_seen, self.total, self.batch_size, self.share)
            requests = stream_requests(self.n_train, self.seed, self.rank, self.size, plan)
            self._it = _loader(dataset, requests, self.workers, self.device.type == "cuda")
        expected = next(self._expected, None)
        if expected != (samples_seen, batch):
            raise RuntimeError(f"data stream out of step: asked for {batch} images at {samples_seen}, "
                               f"planned {expected}")
        item = next(self._it)
        if "error" in item:
            self.close()
            raise ValueError(item["error"])
        if item["bad"]:
            self.skipped_bad += len(item["bad"])
            self.bad_names = (self.bad_names + item["bad"])[-5:]
            if not len(item["images"]):
                raise ValueError(f"every image of the batch at {samples_seen} samples is unreadable "
                                 f"(last: {item['bad'][-1]})")
        return self.normalize(item["images"])

    def state(self, samples_seen: int) -> dict[str, Any]:
        epoch, offset = divmod(samples_seen, self.n_train)
        return {"samples_seen": samples_seen, "n_train": self.n_train, "epoch": epoch, "offset": offset,
                "skipped_bad": self.skipped_bad, "fingerprint": self.splits.collection.fingerprint,
                "mean": list(self.mean), "std": list(self.std), "streamed": True}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("n_train", self.n_train) != self.n_train:
            raise ValueError(f"{self.cfg.name}: the checkpoint was written for {state['n_train']} training images, "
                             f"the collection now has {self.n_train} (the data changed; use a new run directory)")
        now = self.splits.collection.fingerprint
        if state.get("fingerprint", now) != now:
            raise ValueError(f"{self.cfg.name}: the checkpoint was written for collection {state['fingerprint']}, "
                             f"these files are {now} (files were added, removed or renamed; use a new run directory)")
        self.skipped_bad = int(state.get("skipped_bad", 0))

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


class MemorySource:
    """An in-memory set (fashion-mnist, cifar, digits, synthetic): the batched on-device augmentation."""

    streamed = False

    def __init__(self, cfg: DataConfig, img_size: int, channels: int, seed: int, rank: int, size: int,
                 device: torch.device) -> None:
        from xtra.data import load_dataset

        self.cfg, self.seed, self.rank, self.size, self.device = cfg, seed, rank, size, device
        self.dataset = load_dataset(cfg, img_size, channels)
        self.images = self.dataset.train.images.to(device)
        self.n_train = len(self.images)
        self.mean, self.std = self.dataset.mean, self.dataset.std
        self.skipped_bad = 0
        self.bad_names: list[str] = []

    @property
    def describe(self) -> str:
        return f"{self.n_train} train / {len(self.dataset.val.images)} val images of {self.dataset.name}"

    def val_images(self, n: int) -> torch.Tensor:
        return self.dataset.val.images[:n].to(self.device)

    def batch(self, step: int, samples_seen: int, batch: int) -> torch.Tensor:
        from xtra.data import augment
        from xtra.pretrain import batch_indices, step_seed

        gen = torch.Generator(device=self.device).manual_seed(step_seed(self.seed, step))
        idx = batch_indices(samples_seen, batch, self.n_train, self.seed).to(self.device)
        images = self.images[idx]
        if self.cfg.augment:
            images = augment(images, gen, self.cfg, self.dataset.hflip)
        if self.size > 1:  # the same global batch on every rank; each trains on its slice
            local = batch // self.size
            images = images[self.rank * local: (self.rank + 1) * local]
        return images

    def state(self, samples_seen: int) -> dict[str, Any]:
        return {"samples_seen": samples_seen, "n_train": self.n_train}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def open_stream(cfg: DataConfig, img_size: int, channels: int, *, seed: int, rank: int = 0, size: int = 1,
                device: torch.device | str = "cpu", total: int = 0, batch_size: int = 1, share: int = 1):
    """The pretraining batches of ``cfg``: streamed for ``imagefolder:`` / ``wds:``, else in memory."""
    device = torch.device(device)
    if col.is_path_collection(cfg.name):
        return StreamSource(cfg, img_size, channels, seed, rank, size, device, total, batch_size, share)
    return MemorySource(cfg, img_size, channels, seed, rank, size, device)


def planned_images(n: int, seed: int, rank: int, size: int, samples_seen: int, total: int, batch_size: int,
                   share: int) -> np.ndarray:
    """The sample indices a rank reads from ``samples_seen`` to ``total`` (for tests and `data check`)."""
    parts = [r[0] for r in stream_requests(n, seed, rank, size, schedule(samples_seen, total, batch_size, share))]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

