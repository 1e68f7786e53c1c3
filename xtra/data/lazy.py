"""Lazy splits for probing: decoded on demand, never held in memory.

Probing reads path-based collections through ``LazyImages`` (one per split, sharing a ``ProbeDecoder``
whose persistent loader workers decode on demand): the evaluation transform for features and
evaluation, and for ``probe.augment`` the training crops cut from the full-resolution files.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xtra.data import transforms
from xtra.data.decode import PREFETCH, as_is, decode_batch, start_method, worker_init
from xtra.data.listing import Listing


@dataclass(frozen=True)
class Crop:
    """A probe's training crop: RandomResizedCrop(``scale``, ``ratio``) from the decoded full-resolution
    file, bicubic, then a flip where ``hflip``; sample j of micro-batch ``step`` draws from
    ``transforms.sample_rng(seed, step, j)``, so a batch is the same whichever worker decodes it."""

    seed: int
    step: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    hflip: bool


class ProbeSet(torch.utils.data.Dataset):
    """Map-style over requests (rows, positions in the batch, Crop or None = the evaluation
    transform); a worker decodes a whole request. Errors come back as values, as in BatchSet."""

    def __init__(self, listing: Listing, size: int, channels: int, skip_bad: bool) -> None:
        self.listing, self.size, self.channels, self.skip_bad = listing, size, channels, skip_bad

    def __len__(self) -> int:
        return len(self.listing)

    def __getitem__(self, request: tuple[np.ndarray, np.ndarray, Crop | None]) -> dict[str, Any]:
        rows, positions, crop = request
        if crop is None:
            def transform(data: bytes, j: int) -> np.ndarray:
                return transforms.eval_image(data, self.size, self.channels)
        else:
            def transform(data: bytes, j: int) -> np.ndarray:
                rng = transforms.sample_rng(crop.seed, crop.step, int(positions[j]))
                return transforms.train_image(data, self.size, self.channels, crop.scale, crop.ratio, crop.hflip, rng)
        got = decode_batch(self.listing, rows, self.size, self.channels, self.skip_bad, transform)
        if "error" in got:
            return got
        return {"images": torch.from_numpy(got["images"]), "keep": got["keep"], "bad": got["bad"]}


class _Pass:
    """The sampler of a persistent loader: each ``iter(loader)`` reads the requests of the pass
    that was set last."""

    def __init__(self) -> None:
        self.requests: Iterator = iter(())

    def __iter__(self) -> Iterator:
        return self.requests


class ProbeDecoder:
    """Decodes rows of one listing (a collection's train + val + test) on demand, in ``workers``
    loader processes that start on first use and stay for every later pass (``persistent_workers``):
    a probe asks for thousands of batches, and a spawned worker costs seconds to start. One pass runs
    at a time; starting one abandons the rest of the previous one (its prefetched batches are dropped).
    Returns normalized float32 (ImageNet mean/std, the same arithmetic as the in-memory path)."""

    def __init__(self, listing: Listing, size: int, channels: int, skip_bad: bool, workers: int) -> None:
        self.listing, self.size, self.channels, self.workers = listing, size, channels, workers
        self.dataset = ProbeSet(listing, size, channels, skip_bad)
        mean, std = transforms.natural_stats(channels)
        self._m = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self._s = torch.tensor(std).view(1, -1, 1, 1) * 255
        self._pass = _Pass()
        self.batch_loader: torch.utils.data.DataLoader | None = None
        self.pass_id = 0  # which pass the loader's iterator serves now
        self.skipped_bad = 0
        self.bad_names: list[str] = []

    def __getstate__(self) -> dict[str, Any]:  # a copy in another process starts its own workers
        return {**self.__dict__, "batch_loader": None, "_pass": _Pass()}

    def _start(self, requests: Iterator) -> Iterator[dict[str, Any]]:
        if self.batch_loader is None:
            kw: dict[str, Any] = {}
            if self.workers > 0:
                kw = dict(prefetch_factor=PREFETCH, worker_init_fn=worker_init,
                          multiprocessing_context=start_method(), persistent_workers=True)
            self.batch_loader = torch.utils.data.DataLoader(self.dataset, sampler=self._pass, batch_size=None,
                                                       num_workers=self.workers, collate_fn=as_is, **kw)
        self.pass_id += 1
        self._pass.requests = iter(requests)
        return iter(self.batch_loader)

    def _images(self, item: dict[str, Any]) -> torch.Tensor:
        if "error" in item:
            raise ValueError(item["error"])
        _release_freed_memory()
        x = (item["images"].float() - self._m) / self._s
        if item["bad"]:  # an unreadable file (skip_bad) is the mean colour: 0 once normalized
            self.skipped_bad += len(item["bad"])
            self.bad_names = (self.bad_names + item["bad"])[-5:]
            x[torch.from_numpy(~item["keep"])] = 0.0
        return x

    def decode(self, rows: np.ndarray, crop: Crop | None = None) -> torch.Tensor:
        """The images of ``rows``, split into one request per worker (decoded in parallel)."""
        n = len(rows)
        if n == 0:
            return torch.empty(0, self.channels, self.size, self.size)
        bounds = np.linspace(0, n, max(1, min(self.workers, n)) + 1).astype(np.int64)
        requests = [(rows[a:b], np.arange(a, b), crop) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
        return torch.cat([self._images(item) for item in self._start(iter(requests))])

    def in_order(self, rows: np.ndarray, batch: int) -> tuple[int, Iterator[torch.Tensor]]:
        """(pass id, the images of ``rows`` in batches of ``batch``), prefetched by every worker."""
        requests = ((rows[a:a + batch], np.arange(min(batch, len(rows) - a)), None) for a in range(0, len(rows), batch))
        items = self._start(requests)
        return self.pass_id, (self._images(item) for item in items)

    def close(self) -> None:
        """Stop the workers (they also stop when the decoder is garbage-collected)."""
        loader, self.batch_loader = self.batch_loader, None
        it = getattr(loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - not glibc
        return None


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim). Measured: receiving batches from
    loader workers while the encoder runs left glibc holding ~6 MB more per 256-image batch (2.8 GB
    peak RSS over 50k images, flat at ~255 MB with a trim per batch); a trim costs well under a ms."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class LazyImages:
    """A split's images for probing, behaving like its (N, C, S, S) float32 tensor where the probe uses
    it (``len``, ``shape``, slices, index tensors) but holding only row numbers (8 bytes per image):
    every read decodes the files with the evaluation transform. In-order reads (``x[0:b]``,
    ``x[b:2b]``, ... as feature caches and evaluation make them) run as one prefetched pass through
    every worker; other reads decode their rows in parallel, one chunk per worker. ``subset(idx)``
    is a lazy subset; ``cropped(idx, crop)`` gives the probe's augmented training crops instead."""

    lazy = True
    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, decoder: ProbeDecoder, rows: np.ndarray) -> None:
        self.decoder, self.rows = decoder, np.asarray(rows, dtype=np.int64)
        self._ahead: tuple[int, int, int, Iterator[torch.Tensor]] | None = None  # (pass, start, batch, batches)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), self.decoder.channels, self.decoder.size, self.decoder.size))

    def nbytes_held(self) -> int:
        """What this split keeps in memory (its row numbers), for tests and the bench."""
        return int(self.rows.nbytes)

    def subset(self, idx) -> LazyImages:
        return LazyImages(self.decoder, self.rows[_as_index(idx, len(self))])

    def cropped(self, idx, crop: Crop) -> torch.Tensor:
        return self.decoder.decode(self.rows[_as_index(idx, len(self))], crop)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, int | np.integer):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} is out of range for {len(self)} images")
            return self._range(i, i + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._range(start, max(start, stop))
            idx = np.arange(start, stop, step)
        else:
            idx = _as_index(key, len(self))
        if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
            return self._range(int(idx[0]), int(idx[0]) + len(idx))
        return self.decoder.decode(self.rows[idx])

    def _range(self, start: int, stop: int) -> torch.Tensor:
        if stop <= start:
            return torch.empty(0, *self.shape[1:])
        ahead = self._ahead
        if (ahead is not None and ahead[0] == self.decoder.pass_id and ahead[1] == start
                and stop == min(start + ahead[2], len(self))):  # the next batch of the pass in flight
            self._ahead = (ahead[0], stop, ahead[2], ahead[3])
            return next(ahead[3])
        self._ahead = None
        if start == 0 and stop - start < len(self):  # the first batch of an in-order pass: prefetch the rest
            pass_id, batches = self.decoder.in_order(self.rows, stop - start)
            self._ahead = (pass_id, stop, stop - start, batches)
            return next(batches)
        return self.decoder.decode(self.rows[start:stop])


def _as_index(key, n: int) -> np.ndarray:
    idx = key.cpu().numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64).reshape(-1)
    if len(idx) and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"index {int(idx.max())} is out of range for {n} images")
    return np.where(idx < 0, idx + n, idx)
