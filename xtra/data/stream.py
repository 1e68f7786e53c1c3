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

Probing reads the same collections through ``LazyImages`` (one per split, sharing a ``ProbeDecoder``
whose persistent loader workers decode on demand): the evaluation transform for features and
evaluation, and for ``probe.augment`` the training crops cut from the full-resolution files.
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
        if self.augment:
            def transform(data: bytes, j: int) -> np.ndarray:
                rng = transforms.sample_rng(self.seed, int(epochs[j]), int(positions[j]))
                return transforms.train_image(data, self.size, self.channels, self.scale, self.ratio, self.hflip,
                                              rng, fast=self.fast)
        else:
            def transform(data: bytes, j: int) -> np.ndarray:
                return transforms.eval_image(data, self.size, self.channels)
        got = _decode(self.listing, samples, self.size, self.channels, self.skip_bad, transform)
        if "error" in got:
            return got
        keep, bad, out = got["keep"], got["bad"], got["images"]
        return {"images": torch.from_numpy(out[keep] if len(bad) else out),
                "labels": torch.from_numpy(self.listing.labels[samples][keep]), "bad": bad, "keep": keep}


def _decode(listing: col.Listing, samples: np.ndarray, size: int, channels: int, skip_bad: bool,
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
# Lazy splits for probing: decoded on demand, never held in memory


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

    def __init__(self, listing: col.Listing, size: int, channels: int, skip_bad: bool) -> None:
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
        got = _decode(self.listing, rows, self.size, self.channels, self.skip_bad, transform)
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

    def __init__(self, listing: col.Listing, size: int, channels: int, skip_bad: bool, workers: int) -> None:
        self.listing, self.size, self.channels, self.workers = listing, size, channels, workers
        self.dataset = ProbeSet(listing, size, channels, skip_bad)
        mean, std = transforms.natural_stats(channels)
        self._m = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self._s = torch.tensor(std).view(1, -1, 1, 1) * 255
        self._pass = _Pass()
        self._loader: torch.utils.data.DataLoader | None = None
        self.pass_id = 0  # which pass the loader's iterator serves now
        self.skipped_bad = 0
        self.bad_names: list[str] = []

    def __getstate__(self) -> dict[str, Any]:  # a copy in another process starts its own workers
        return {**self.__dict__, "_loader": None, "_pass": _Pass()}

    def _start(self, requests: Iterator) -> Iterator[dict[str, Any]]:
        if self._loader is None:
            kw: dict[str, Any] = {}
            if self.workers > 0:
                kw = dict(prefetch_factor=PREFETCH, worker_init_fn=_worker_init,
                          multiprocessing_context=start_method(), persistent_workers=True)
            self._loader = torch.utils.data.DataLoader(self.dataset, sampler=self._pass, batch_size=None,
                                                       num_workers=self.workers, collate_fn=_as_is, **kw)
        self.pass_id += 1
        self._pass.requests = iter(requests)
        return iter(self._loader)

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
        loader, self._loader = self._loader, None
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
        from xtra.data.sampler import batch_indices, step_seed

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

