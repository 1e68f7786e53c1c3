"""Raw readers of the small registered sets, each returning uint8 or float [0, 1] arrays (N, C, H, W)
plus int64 labels: IDX files (MNIST, Fashion-MNIST), CIFAR python batches (numpy arrays only, never
arbitrary pickled code), scikit-learn's digits, and the seeded synthetic gratings; and the fixed
seeded held-out test carve of sets without a test split.
"""

from __future__ import annotations

import gzip
import math
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xtra.data.sets import CIFAR10_CLASSES, FASHION_CLASSES, IDX_FILES, DatasetSpec, idx_file


@dataclass(frozen=True)
class RawSet:
    train_x: np.ndarray  # (N, C, H, W) uint8, or float32 in [0, 1]
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            return gzip.decompress(path.read_bytes())
        return path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes (magic 0x0000080N) with the expected number of dimensions."""
    data = _read_bytes(path)
    kind = "image" if ndim == 3 else "label"
    expected = f"magic 0x0000080{ndim} (a {ndim}-d ubyte {kind} array)"
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != ndim:
        got = data[:4].hex() if len(data) >= 4 else f"{len(data)} bytes"
        raise ValueError(f"{path}: not an IDX {kind} file (expected {expected}, got 0x{got})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, expected at least {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    size = math.prod(dims)
    if len(data) != header + size:
        raise ValueError(f"{path}: IDX payload has {len(data) - header} bytes, expected {size} for shape {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_set(spec: DatasetSpec, folder: Path) -> RawSet:
    def pair(images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
        ipath, lpath = idx_file(folder, IDX_FILES[images]), idx_file(folder, IDX_FILES[labels])
        assert ipath is not None and lpath is not None  # located before
        x, y = _read_idx(ipath, 3), _read_idx(lpath, 1)
        if len(x) != len(y):
            raise ValueError(f"{ipath} has {len(x)} images but {lpath} has {len(y)} labels")
        if len(y) and int(y.max()) >= spec.num_classes:
            raise ValueError(f"{lpath}: label {int(y.max())} out of range (expected 0..{spec.num_classes - 1})")
        return x[:, None], y.astype(np.int64)

    train_x, train_y = pair("train_images", "train_labels")
    test_x, test_y = pair("test_images", "test_labels")
    names = FASHION_CLASSES if spec.name == "fashion-mnist" else tuple(str(i) for i in range(10))
    return RawSet(train_x, train_y, test_x, test_y, spec.num_classes, names)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (the CIFAR batches), never arbitrary code."""

    _ALLOWED = {(f"numpy.{core}.{mod}", fn) for core in ("core", "_core")
                for mod, fn in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}
    _ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a CIFAR python batch (expected a dict, got {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: CIFAR batch lacks 'data' or {label_key!r} (has: {', '.join(map(str, batch))})")
    x = np.asarray(batch["data"], dtype=np.uint8)
    y = np.asarray(batch[label_key], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
        raise ValueError(f"{path}: expected 'data' of shape (N, 3072) and N labels, got {x.shape} and {y.shape}")
    return x.reshape(-1, 3, 32, 32), y


def read_cifar(spec: DatasetSpec, folder: Path) -> RawSet:
    if spec.name == "cifar10":
        parts = [_read_cifar_batch(folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
        train_x = np.concatenate([p[0] for p in parts])
        train_y = np.concatenate([p[1] for p in parts])
        test_x, test_y = _read_cifar_batch(folder / "test_batch", "labels")
        names = CIFAR10_CLASSES
    else:
        train_x, train_y = _read_cifar_batch(folder / "train", "fine_labels")
        test_x, test_y = _read_cifar_batch(folder / "test", "fine_labels")
        names = ()
        meta = folder / "meta"
        if meta.is_file():
            names = tuple(map(str, _load_pickle(meta).get("fine_label_names", ())))
    for y, what in ((train_y, "train"), (test_y, "test")):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= spec.num_classes):
            raise ValueError(f"{folder}: {what} labels out of range (expected 0..{spec.num_classes - 1})")
    return RawSet(train_x, train_y, test_x, test_y, spec.num_classes, names)


_HELD_OUT_SEED = 1234  # the fixed test carve of digits / flat image folders (independent of split_seed)
_HELD_OUT_FRACTION = 0.2


def held_out(n: int, fraction: float = _HELD_OUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """A fixed (train, test) index carve, the same everywhere and always."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_HELD_OUT_SEED)).numpy()
    n_test = int(round(n * fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def read_digits() -> RawSet:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = held_out(len(y))
    return RawSet(x[train], y[train], x[test], y[test], 10, tuple(str(i) for i in range(10)))


def _gratings(n: int, generator: torch.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """n RGB images (n, 3, size, size) in [0, 1]. Class c is a grating at c * 18 degrees (a cue that
    needs nonlinear features) under a bright Gaussian window centred near c * 36 degrees on a ring
    (a coarse cue a linear probe on pixels partly sees), with random frequency, phase, window size,
    tint and pixel noise."""
    labels = torch.randint(0, 10, (n,), generator=generator)
    u = torch.rand(n, 9, generator=generator)
    theta = labels * (math.pi / 10) + (u[:, 0] - 0.5) * 0.1  # (n,)
    freq = 1.5 + 2.0 * u[:, 1]
    phase = 2 * math.pi * u[:, 2]
    where = labels * (2 * math.pi / 10) + (u[:, 3] - 0.5) * 1.2
    radius = 0.15 + 0.35 * u[:, 4]
    cx, cy = radius * torch.cos(where), radius * torch.sin(where)
    sigma = 0.35 + 0.35 * u[:, 5]
    contrast = 0.6 + 0.4 * u[:, 6]
    coords = (torch.arange(size) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")  # (size, size)
    t = lambda v: v[:, None, None]  # noqa: E731 - (n,) -> (n, 1, 1)
    along = xx * t(torch.cos(theta)) + yy * t(torch.sin(theta))  # (n, size, size)
    wave = torch.sin(2 * math.pi * t(freq) * along + t(phase))
    window = torch.exp(-((xx - t(cx)) ** 2 + (yy - t(cy)) ** 2) / (2 * t(sigma) ** 2))
    brightness = 0.1 + 0.2 * u[:, 7]
    gray = 0.3 + t(brightness) * window + 0.35 * t(contrast) * wave * window  # (n, size, size)
    tint = 0.6 + 0.4 * torch.rand(n, 3, 1, 1, generator=generator)
    noise = 0.08 * torch.randn(n, 3, size, size, generator=generator)
    images = (gray[:, None] * tint + noise).clamp_(0, 1)  # (n, 3, size, size)
    return images.numpy().astype(np.float32), labels.numpy().astype(np.int64)


_SYNTHETIC_SEED = 20241123


def read_synthetic(n_train: int) -> RawSet:
    g = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    train_x, train_y = _gratings(n_train, g)
    test_x, test_y = _gratings(max(64, n_train // 4), g)
    names = tuple(f"{18 * c} deg" for c in range(10))
    return RawSet(train_x, train_y, test_x, test_y, 10, names)
