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

Probing reads the same collections through ``lazy.LazyImages``; loader workers decode in ``decode``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from xtra.config import DataConfig
from xtra.data import collection as col
from xtra.data import transforms
from xtra.data.augmentation import augment
from xtra.data.decode import BatchSet, batch_loader, decode_all, resolve_workers
from xtra.data.memory import load_dataset
from xtra.data.registry import resolve_hflip
from xtra.data.sampler import batch_indices, step_seed
from xtra.data.splitting import splits


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
        self.hflip = resolve_hflip(cfg)
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
            self._it = batch_loader(dataset, requests, self.workers, self.device.type == "cuda")
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

