"""The dataset registry and in-memory sets; path-based collections are streamed (see the submodules).

Registry: ``fashion-mnist`` and ``mnist`` (IDX files), ``cifar10`` / ``cifar100`` (the "python version"
directories), ``digits`` (scikit-learn's bundled 8x8 digits), ``synthetic`` (procedural, seeded, for
tests), and two path-based collections: ``imagefolder:PATH`` (one folder per class; ImageNet's
train/ + val/ layout) and ``wds:PATTERN`` (WebDataset tar shards, e.g. from ``xtra data pack``).

Small sets become a :class:`Dataset` of three :class:`Split` s of float32 images ``(N, C, H, W)``
at the model's resolution and channel count (28 px sets are zero-padded to 32, others resized; gray is
repeated to RGB, RGB turned to luminance), normalized with per-channel statistics of the train split
(taken before any ``limit_train`` cap), and pretraining augments them in batches on the device.
Path-based collections are never held in memory for pretraining: ``stream.open_stream`` reads,
decodes and crops them in loader workers (``transforms``: RandomResizedCrop from the full-resolution
image, bicubic, flip; ImageNet mean/std). ``load_dataset`` of one gives lazy splits for probing
(``stream.LazyImages``: the evaluation transform, shorter side to size/0.8533 and a centre crop,
decoded on demand in loader workers; nothing decoded is kept).

The val split is carved from the training set by a permutation seeded with ``DataConfig.split_seed``
alone (never the trial seed), so every trial of a study probes on the same images (``val_size``
images, else ``val_fraction`` of them); sets without an official test split (digits, flat image
folders, shards without val shards) hold out a fixed seeded 20% as test.

Files are looked for in ``DataConfig.root`` (the folder itself or ``root/<name>``) if set, else in
``$XTRA_DATA/<name>`` (default ``~/.cache/xtra/data/<name>``, where ``download`` puts them), then in
``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist``).

Only torch, numpy and the standard library are imported here; scikit-learn and Pillow are imported
inside the functions that need them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xtra.config import DataConfig
from xtra.data.collection import BadCollection, is_path_collection

__all__ = [
    "BadCollection",
    "Dataset",
    "DatasetNotFound",
    "DownloadError",
    "Split",
    "augment",
    "clear_cache",
    "data_home",
    "denormalize",
    "download",
    "fingerprint",
    "list_datasets",
    "load_dataset",
    "locate",
    "workers_advice",
]


@dataclass(frozen=True, eq=False)  # compared by identity: tensors have no single truth value
class Split:
    """One split in memory. Treat the tensors as read-only: datasets are shared (memoized)."""

    images: torch.Tensor  # (N, C, H, W) float32, normalized; for imagefolder:/wds: a stream.LazyImages
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


class DatasetNotFound(ValueError):
    """The dataset's files are not where we looked. The message is one line: which set, every path
    looked in, and how to get it."""

    def __init__(self, name: str, looked_in: list[str], hint: str = "") -> None:
        self.name = name
        self.looked_in = list(looked_in)
        self.hint = hint
        how = hint or _how_to_get(name)
        super().__init__(f"dataset {name!r} not found (looked in: {', '.join(self.looked_in)}); {how}")

    def __reduce__(self):  # noqa: ANN204 - survives pickling (Ray ships errors between processes)
        return (type(self), (self.name, self.looked_in, self.hint))


class DownloadError(ValueError):
    """A download failed or its checksum did not match; nothing was put in place."""


# ---------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class _Remote:
    """One file of an official distribution and how to check it.

    ``sha256`` is set only where we know the value for that exact file; otherwise ``md5`` (as
    published by the dataset authors) and ``size`` are checked. See ``_SPECS`` for provenance."""

    filename: str
    size: int
    md5: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class _Spec:
    name: str
    kind: str  # idx | cifar | digits | synthetic
    description: str
    num_classes: int
    n_train: int | None
    n_test: int | None
    hflip: bool  # what hflip="auto" resolves to
    base_url: str = ""
    remotes: tuple[_Remote, ...] = ()
    subdir: str = ""  # cifar: the folder inside the tarball


_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Checksums, and where each one comes from (we could not download the files to hash them here):
# - fashion-mnist: md5 from the Fashion-MNIST README (zalandoresearch/fashion-mnist); sha256 and
#   sizes from TensorFlow Datasets' url_checksums/fashion_mnist.txt, which records the same S3 URLs.
#   Debian's dataset-fashion-mnist re-gzips the files, so its .gz bytes hash differently (the
#   decoded images are the same); that is why installed files are never checked against these.
# - mnist: md5 as used by torchvision for the ossci-datasets mirror (the original LeCun files);
#   sizes from TensorFlow Datasets. No sha256 that we can vouch for that mirror's bytes.
# - cifar10 / cifar100: md5 of the python-version tarballs as published on the CIFAR page (and used
#   by torchvision); sizes as served by the Toronto site. No published sha256 for these tarballs.
_SPECS: dict[str, _Spec] = {
    "fashion-mnist": _Spec(
        "fashion-mnist", "idx", "Zalando Fashion-MNIST: 28x28 gray clothing, 10 classes", 10, 60_000, 10_000,
        hflip=True, base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        remotes=(
            _Remote("train-images-idx3-ubyte.gz", 26_421_880, "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
            _Remote("train-labels-idx1-ubyte.gz", 29_515, "25c81989df183df01b3e8a0aad5dffbe",
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
            _Remote("t10k-images-idx3-ubyte.gz", 4_422_102, "bef4ecab320f06d8554ea6380940ec79",
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
            _Remote("t10k-labels-idx1-ubyte.gz", 5_148, "bb300cfdad3c16e7a12a480ee83cd310",
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        )),
    "mnist": _Spec(
        "mnist", "idx", "LeCun MNIST: 28x28 gray handwritten digits, 10 classes", 10, 60_000, 10_000,
        hflip=False, base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        remotes=(
            _Remote("train-images-idx3-ubyte.gz", 9_912_422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            _Remote("train-labels-idx1-ubyte.gz", 28_881, "d53e105ee54ea40749a09fcbcd1e9432"),
            _Remote("t10k-images-idx3-ubyte.gz", 1_648_877, "9fb629c4189551a2d022fa330f9573f3"),
            _Remote("t10k-labels-idx1-ubyte.gz", 4_542, "ec29112dd5afa0611ce80d1b7f02629c"),
        )),
    "cifar10": _Spec(
        "cifar10", "cifar", "CIFAR-10: 32x32 color objects, 10 classes", 10, 50_000, 10_000,
        hflip=True, base_url="https://www.cs.toronto.edu/~kriz/",
        remotes=(_Remote("cifar-10-python.tar.gz", 170_498_071, "c58f30108f718f92721af3b95e74349a"),),
        subdir="cifar-10-batches-py"),
    "cifar100": _Spec(
        "cifar100", "cifar", "CIFAR-100: 32x32 color objects, 100 fine classes", 100, 50_000, 10_000,
        hflip=True, base_url="https://www.cs.toronto.edu/~kriz/",
        remotes=(_Remote("cifar-100-python.tar.gz", 169_001_437, "eb9058c3a382ffc7106e4002c42a8d85"),),
        subdir="cifar-100-python"),
    "digits": _Spec(
        "digits", "digits", "scikit-learn's bundled 8x8 digits (16 gray levels), 10 classes; 20% held out as test",
        10, 1_438, 359, hflip=False),
    "synthetic": _Spec(
        "synthetic", "synthetic", "procedural oriented gratings + noise, 10 classes (tests, smoke runs)",
        10, None, None, hflip=False),  # a flip changes a grating's orientation, i.e. its class
}

_SYSTEM_ROOT = Path("/usr/share/datasets")
_DEFAULT_HOME = Path("~/.cache/xtra/data")
_HELD_OUT_SEED = 1234  # the fixed test carve of digits / flat image folders (independent of split_seed)
_HELD_OUT_FRACTION = 0.2
_SYNTHETIC_SEED = 20241123
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's "L" conversion


def _how_to_get(name: str) -> str:
    if name == "fashion-mnist":
        return "get it with `xtra data get fashion-mnist` or `apt-get install dataset-fashion-mnist`"
    if name in _SPECS and _SPECS[name].remotes:
        return f"get it with `xtra data get {name}`"
    if name.startswith("imagefolder:"):
        return "expected PATH/train/<class>/*.png|jpg (and PATH/val/<class>/...) or PATH/<class>/*.png|jpg"
    if name.startswith("wds:"):
        return "expected tar shards (wds:/data/train-{000000..000099}.tar) or a folder from `xtra data pack`"
    return "see `xtra data list`"


def data_home() -> Path:
    """Where downloads go and where sets are looked for first: ``$XTRA_DATA`` or ``~/.cache/xtra/data``."""
    env = os.environ.get("XTRA_DATA", "")
    return Path(env).expanduser() if env else _DEFAULT_HOME.expanduser()


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown dataset {name!r} (known: {', '.join(_SPECS)}, imagefolder:PATH, wds:PATTERN)")
    return _SPECS[name]


def _candidate_dirs(name: str, root: str) -> list[Path]:
    """Directories that may hold the set, in lookup order."""
    if root:
        base = Path(root).expanduser()
        return [base, base / name]
    return [data_home() / name, _SYSTEM_ROOT / name]


def _idx_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _cifar_files(spec: _Spec) -> tuple[str, ...]:
    if spec.name == "cifar10":
        return tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
    return ("train", "test")


def _locate_files(spec: _Spec, root: str) -> tuple[Path, list[str]]:
    looked: list[str] = []
    for directory in _candidate_dirs(spec.name, root):
        if spec.kind == "idx":
            looked.append(str(directory))
            if all(_idx_file(directory, stem) for stem in _IDX_FILES.values()):
                return directory, looked
        else:  # cifar: the extracted folder itself, or a directory holding it
            for folder in (directory, directory / spec.subdir):
                looked.append(str(folder))
                if all((folder / f).is_file() for f in _cifar_files(spec)):
                    return folder, looked
    raise DatasetNotFound(spec.name, looked)


def locate(cfg: DataConfig) -> str:
    """Where ``cfg``'s dataset is, without loading it. Raises ``DatasetNotFound`` / ``ValueError``."""
    name = cfg.name
    if is_path_collection(name):
        from xtra.data.collection import open_collection

        return open_collection(name).root  # lists it: every layout error is raised here, before any work
    spec = _spec(name)
    if spec.kind == "digits":
        import importlib.util

        if importlib.util.find_spec("sklearn") is None:
            raise DatasetNotFound(name, ["scikit-learn (not installed)"], "install it with `pip install scikit-learn`")
        return "scikit-learn bundled"
    if spec.kind == "synthetic":
        return "synthetic"
    folder, _ = _locate_files(spec, cfg.root)
    return str(folder.resolve())


# ---------------------------------------------------------------------------------------------
# Raw readers: each returns uint8 or float [0, 1] arrays (N, C, H, W) plus int64 labels.


@dataclass(frozen=True)
class _Raw:
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


def _read_idx_set(spec: _Spec, folder: Path) -> _Raw:
    def pair(images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
        ipath, lpath = _idx_file(folder, _IDX_FILES[images]), _idx_file(folder, _IDX_FILES[labels])
        assert ipath is not None and lpath is not None  # located before
        x, y = _read_idx(ipath, 3), _read_idx(lpath, 1)
        if len(x) != len(y):
            raise ValueError(f"{ipath} has {len(x)} images but {lpath} has {len(y)} labels")
        if len(y) and int(y.max()) >= spec.num_classes:
            raise ValueError(f"{lpath}: label {int(y.max())} out of range (expected 0..{spec.num_classes - 1})")
        return x[:, None], y.astype(np.int64)

    train_x, train_y = pair("train_images", "train_labels")
    test_x, test_y = pair("test_images", "test_labels")
    names = _FASHION_CLASSES if spec.name == "fashion-mnist" else tuple(str(i) for i in range(10))
    return _Raw(train_x, train_y, test_x, test_y, spec.num_classes, names)


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


def _read_cifar(spec: _Spec, folder: Path) -> _Raw:
    if spec.name == "cifar10":
        parts = [_read_cifar_batch(folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
        train_x = np.concatenate([p[0] for p in parts])
        train_y = np.concatenate([p[1] for p in parts])
        test_x, test_y = _read_cifar_batch(folder / "test_batch", "labels")
        names = _CIFAR10_CLASSES
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
    return _Raw(train_x, train_y, test_x, test_y, spec.num_classes, names)


def _held_out(n: int, fraction: float = _HELD_OUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """A fixed (train, test) index carve, the same everywhere and always."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_HELD_OUT_SEED)).numpy()
    n_test = int(round(n * fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _read_digits() -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = _held_out(len(y))
    return _Raw(x[train], y[train], x[test], y[test], 10, tuple(str(i) for i in range(10)))


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


def _read_synthetic(n_train: int) -> _Raw:
    g = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    train_x, train_y = _gratings(n_train, g)
    test_x, test_y = _gratings(max(64, n_train // 4), g)
    names = tuple(f"{18 * c} deg" for c in range(10))
    return _Raw(train_x, train_y, test_x, test_y, 10, names)


def _stamp(name: str, where: str) -> tuple:
    """(file, size, mtime) of a located set's files, so memoized data follows changes on disk."""
    if is_path_collection(name):
        from xtra.data.collection import open_collection

        return (open_collection(name).fingerprint,)
    if _spec(name).kind not in ("idx", "cifar"):
        return ()
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                            for e in os.scandir(where) if e.is_file()))
    except OSError:
        return ()


@functools.lru_cache(maxsize=4)
def _raw(name: str, where: str, stamp: tuple, synthetic_size: int, img_size: int, channels: int) -> _Raw:
    """Decoded source arrays; shared by every split/resolution asked of the same files."""
    spec = _spec(name)
    if spec.kind == "idx":
        return _read_idx_set(spec, Path(where))
    if spec.kind == "cifar":
        return _read_cifar(spec, Path(where))
    if spec.kind == "digits":
        return _read_digits()
    return _read_synthetic(synthetic_size)


# ---------------------------------------------------------------------------------------------
# From raw arrays to normalized splits


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


def _resolve_hflip(cfg: DataConfig) -> bool:
    if cfg.hflip != "auto":
        return cfg.hflip == "on"
    if is_path_collection(cfg.name):
        return True
    return _spec(cfg.name).hflip


@functools.lru_cache(maxsize=4)
def _load(name: str, where: str, stamp: tuple, val_size: int, val_fraction: float, split_seed: int,
          limit_train: int, synthetic_size: int, hflip: bool, img_size: int, channels: int, skip_bad: bool,
          workers: int) -> Dataset:
    from xtra.data.stream import carve

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
                 cfg.limit_train, cfg.synthetic_size if cfg.name == "synthetic" else 0, _resolve_hflip(cfg), img_size,
                 channels, cfg.skip_bad and path_based, cfg.workers if path_based else 0)


def _load_collection(cfg: DataConfig, where: str, hflip: bool, img_size: int, channels: int) -> Dataset:
    """A path-based collection's splits for probing (the pretraining loop streams instead): lazy
    images (``stream.LazyImages``) that decode on demand with the evaluation transform in loader
    workers, normalized with ImageNet statistics, so memory does not grow with the number of images;
    labels in memory (8 bytes per image). An unreadable file stops with one line when it is read, or
    with ``skip_bad`` reads as the mean colour (counted in ``decoder.skipped_bad``)."""
    from xtra.data import collection, stream, transforms

    parts = stream.splits(cfg)
    splits = [parts.train, parts.val, parts.test]
    decoder = stream.ProbeDecoder(collection.ConcatListing(splits), img_size, channels, cfg.skip_bad,
                                  stream.resolve_workers(cfg.workers))
    starts = np.cumsum([0] + [len(part) for part in splits])
    train, val, test = (Split(stream.LazyImages(decoder, np.arange(a, b)), torch.from_numpy(part.labels.copy()))
                        for part, a, b in zip(splits, starts[:-1].tolist(), starts[1:].tolist()))
    mean, std = transforms.natural_stats(channels)
    return Dataset(name=cfg.name, train=train, val=val, test=test,
                   num_classes=len(parts.collection.classes), mean=mean, std=std, hflip=hflip, source=where,
                   class_names=parts.collection.classes)


def fingerprint(cfg: DataConfig) -> str:
    """A content fingerprint of a path-based collection that does not depend on where it lives:
    imagefolder: a hash of the sorted split/class/file names and sizes (one directory listing);
    wds: the pack manifest's shard checksums, else the shard names and sizes. For a registered set
    (fashion-mnist, ...) its name. Bad layouts raise the same one-line errors as ``locate``."""
    if not is_path_collection(cfg.name):
        return cfg.name
    from xtra.data.collection import open_collection

    c = open_collection(cfg.name)
    return f"{c.kind}-{c.fingerprint}"


# Per-image training cost on a GPU, for `workers_advice`: FLOPs / (MFU x peak). The defaults are the
# README's goal (40% MFU) and an H200's dense bf16 peak (989 TFLOP/s); not measured here.
H200_BF16_PEAK = 989e12
TARGET_MFU = 0.40
# Images/s of one loader worker (read + decode + RandomResizedCrop + flip, RGB) on ImageNet-like JPEGs
# of about 500x375, by output size, measured by `xtra bench --sections data` on this project's shared
# 2-core machine (docs/bench-cpu-2core-data.md). A dedicated server core is faster, so advice from
# these figures errs towards more workers.
MEASURED_WORKER_RATE = {32: 129.0, 256: 43.5}


def workers_advice(model_cfg, per_worker_images_per_s: float | None = None, *, peak_flops: float = H200_BF16_PEAK,
                   mfu: float = TARGET_MFU, headroom: float = 1.25, gpu: str = "H200") -> dict:
    """How many loader worker processes keep one GPU fed: the GPU's images/s at ``mfu`` of
    ``peak_flops`` (from ``flops_per_image``), times ``headroom``, over the per-worker decode +
    augment rate (default: ``MEASURED_WORKER_RATE`` at the nearest measured size). Returns the
    figures and a one-line ``advice`` (what `xtra study show --preset paper` prints)."""
    from xtra.config import flops_per_image

    measured = per_worker_images_per_s is None
    if measured:
        nearest = min(MEASURED_WORKER_RATE, key=lambda s: abs(s - model_cfg.img_size))
        per_worker_images_per_s = MEASURED_WORKER_RATE[nearest]
    if per_worker_images_per_s <= 0:
        raise ValueError(f"per_worker_images_per_s={per_worker_images_per_s} must be > 0 (a measured rate)")
    gpu_ips = mfu * peak_flops / flops_per_image(model_cfg)
    workers = math.ceil(headroom * gpu_ips / per_worker_images_per_s)
    source = "measured here by `xtra bench --sections data`" if measured else "given"
    advice = (f"data loading: one {gpu} at {mfu:.0%} MFU trains ~{gpu_ips:,.0f} images/s of this model at "
              f"{model_cfg.img_size} px; at {per_worker_images_per_s:,.0f} images/s per loader worker (decode + crop, "
              f"{source}) it needs ~{workers} loader workers per GPU: --set data.workers={workers}, "
              f"--cpus-per-trial >= {workers + 1} per GPU")
    return {"gpu_images_per_s": gpu_ips, "per_worker_images_per_s": per_worker_images_per_s, "workers": workers,
            "mfu": mfu, "peak_flops": peak_flops, "advice": advice}


def clear_cache() -> None:
    """Forget memoized datasets (e.g. after files changed on disk)."""
    from xtra.data import collection, stream

    _load.cache_clear()
    _raw.cache_clear()
    stream._splits.cache_clear()
    collection.clear()


# ---------------------------------------------------------------------------------------------
# Augmentation and display


def augment(images: torch.Tensor, generator: torch.Generator, cfg: DataConfig, hflip: bool) -> torch.Tensor:
    """Random resized crop + optional horizontal flip for a batch, on ``images.device``.

    Like torchvision's RandomResizedCrop: the crop's area fraction is uniform in ``cfg.crop_scale`` and
    its aspect ratio log-uniform in ``cfg.crop_ratio`` (sides clipped to the image); the crop is
    resampled bilinearly back to H x W. With ``hflip`` each image is mirrored with p = 0.5. All
    randomness comes from ``generator`` (which must live on ``images.device``): the same generator
    state gives the same output. Always augments; whether to call it (``cfg.augment``) is the caller's.
    """
    if images.ndim != 4:
        raise ValueError(f"augment expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    b = images.shape[0]
    if b == 0:
        return images
    u = torch.rand(b, 5, generator=generator, device=images.device, dtype=torch.float32)  # (B, 5)
    lo, hi = cfg.crop_scale
    area = lo + (hi - lo) * u[:, 0]
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)  # crop centre in [-1, 1] coordinates, crop kept inside
    cy = (1 - h) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if hflip else torch.ones_like(w)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w * flip, zero, cx], dim=1),
                         torch.stack([zero, h, cy], dim=1)], dim=1)  # (B, 2, 3): output -> input coords
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    grid = F.affine_grid(theta.to(work.dtype), list(work.shape), align_corners=False)  # (B, H, W, 2)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(images.dtype)


def denormalize(images: torch.Tensor, dataset: Dataset) -> torch.Tensor:
    """Normalized images (..., C, H, W) back to pixel values in [0, 1]."""
    c = len(dataset.mean)
    if images.ndim < 3 or images.shape[-3] != c:
        raise ValueError(f"denormalize expects (..., {c}, H, W) images for {dataset.name}, got {tuple(images.shape)}")
    mean = torch.tensor(dataset.mean, dtype=images.dtype, device=images.device).view(c, 1, 1)
    std = torch.tensor(dataset.std, dtype=images.dtype, device=images.device).view(c, 1, 1)
    return (images * std + mean).clamp(0, 1)


# ---------------------------------------------------------------------------------------------
# Listing


def _dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_datasets() -> list[dict]:
    """One row per registered set: name, found, where (the folder, or "not in ..." every place looked),
    looked_in (those places, when not found), size (bytes on disk or None), n_train, n_test, description.
    ``imagefolder:PATH`` is listed as a pattern."""
    rows: list[dict] = []
    for spec in _SPECS.values():
        row = dict(name=spec.name, found=False, where="", looked_in=[], size=None, n_train=spec.n_train,
                   n_test=spec.n_test, description=spec.description)
        try:
            where = locate(DataConfig(name=spec.name))
        except DatasetNotFound as e:
            row["where"], row["looked_in"] = "not in " + ", ".join(e.looked_in), e.looked_in
        else:
            row["found"], row["where"] = True, where
            if spec.kind in ("idx", "cifar"):
                folder = Path(where)
                files = ([_idx_file(folder, s) for s in _IDX_FILES.values()] if spec.kind == "idx"
                         else [folder / f for f in _cifar_files(spec)])
                row["size"] = sum(_dir_size(f) for f in files if f is not None)
            elif spec.kind == "digits":
                row["size"] = _digits_size()
        rows.append(row)
    rows.append(dict(name="imagefolder:PATH", found=False, where="PATH/train/<class>/*.png|jpg (+ PATH/val/...)",
                     looked_in=[], size=None, n_train=None, n_test=None,
                     description="your own images, one folder per class (ImageNet's layout); streamed"))
    rows.append(dict(name="wds:PATTERN", found=False, where="a `xtra data pack` folder, or train-{000000..000099}.tar",
                     looked_in=[], size=None, n_train=None, n_test=None,
                     description="WebDataset tar shards (<key>.jpg + <key>.cls); streamed"))
    return rows


def _digits_size() -> int | None:
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path.stat().st_size if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# Download


def _algorithm(expected: str) -> str:
    if len(expected) == 64:
        return "sha256"
    if len(expected) == 32:
        return "md5"
    raise ValueError(f"checksum {expected!r} is neither a sha256 (64 hex digits) nor an md5 (32 hex digits)")


def _expected(remote: _Remote, checksums: dict[str, str] | None) -> tuple[str, str, int | None]:
    """(algorithm, hex digest, size or None) that a downloaded file must match."""
    if checksums and remote.filename in checksums:
        value = checksums[remote.filename].lower()
        return _algorithm(value), value, None
    if remote.sha256:
        return "sha256", remote.sha256, remote.size
    return "md5", remote.md5, remote.size


def _fetch(url: str, target: Path, progress: Callable[[int, int | None], None] | None) -> dict[str, str]:
    """Stream ``url`` into ``target``; return its md5 and sha256."""
    digests = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                for d in digests.values():
                    d.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            if progress and total is None:
                progress(done, done)  # finish the line
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot download {url}: {reason}") from None
    return {k: d.hexdigest() for k, d in digests.items()}


def _progress_printer(label: str) -> Callable[[int, int | None], None]:
    def show(done: int, total: int | None) -> None:
        of = f" / {total / 1e6:.1f}" if total else ""
        end = "\n" if total and done >= total else ""
        print(f"\r{label}: {done / 1e6:.1f}{of} MB", end=end, file=sys.stderr, flush=True)

    return show


def _extract(tarball: Path, into: Path) -> None:
    try:
        if not hasattr(tarfile, "data_filter"):  # Python < 3.11.4: extractall would follow any member path
            raise DownloadError(f"{tarball.name}: not extracted: Python {sys.version.split()[0]} has no safe tar "
                                "extraction (tarfile's 'data' filter, Python >= 3.11.4); upgrade Python, or "
                                f"extract it yourself and point data.root at it")
        with tarfile.open(tarball, "r:gz") as tar:
            tar.extractall(into, filter="data")  # member paths stay inside `into`, no links out, no devices
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DownloadError(f"{tarball.name}: cannot extract ({e})") from None


def _put(src: Path, dst: Path) -> None:
    """Move a file or folder into place; an existing folder is swapped out, then removed."""
    if src.is_dir() and dst.exists():
        old = dst.with_name(f".old-{dst.name}-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def download(name: str, dest_root: Path | None = None, base_url: str | None = None, progress: bool = True,
             checksums: dict[str, str] | None = None) -> Path:
    """Fetch an official distribution into ``dest_root/<name>`` (default root: ``data_home()``).

    Files are fetched from ``base_url`` (else ``$XTRA_DATA_BASE_URL``, else the official source) into a
    staging folder beside the destination, each checked against its checksum (``checksums`` maps a
    file name to an md5 or sha256 hex digest and overrides the built-in one), CIFAR tarballs are
    extracted there, and only then is everything moved into place with ``os.replace``. On any error
    the staging folder is removed and nothing new is in place. Returns the dataset's folder.
    """
    if is_path_collection(name):
        raise ValueError(f"{name}: imagefolder:/wds: collections are your own files; there is nothing to download")
    spec = _spec(name)
    if not spec.remotes:
        what = "bundled with scikit-learn" if spec.kind == "digits" else "generated on the fly"
        raise ValueError(f"dataset {name!r} is {what}; there is nothing to download")
    names = [r.filename for r in spec.remotes]
    unknown = sorted(set(checksums or {}) - set(names))
    if unknown:
        raise ValueError(f"checksums given for {', '.join(unknown)}, which {name} does not have "
                         f"(its files: {', '.join(names)})")
    root = Path(dest_root).expanduser() if dest_root is not None else data_home()
    base = base_url or os.environ.get("XTRA_DATA_BASE_URL", "") or spec.base_url
    base = base if base.endswith("/") else base + "/"
    dest = root / name
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        for remote in spec.remotes:
            url = base + remote.filename
            part = staging / remote.filename
            hashes = _fetch(url, part, _progress_printer(remote.filename) if progress else None)
            algo, want, size = _expected(remote, checksums)
            if size is not None and part.stat().st_size != size:
                raise DownloadError(f"{remote.filename}: size mismatch from {url} (expected {size} bytes, "
                                    f"got {part.stat().st_size}); the download was removed")
            got = hashes[algo]
            if got != want:
                raise DownloadError(f"{remote.filename}: {algo} mismatch from {url} (expected {want}, got {got}); "
                                    "the download was removed")
        if spec.kind == "cifar":
            for remote in spec.remotes:
                _extract(staging / remote.filename, staging)
                (staging / remote.filename).unlink()
            if not (staging / spec.subdir).is_dir():
                raise DownloadError(f"{spec.remotes[0].filename}: has no {spec.subdir}/ folder")
        # Everything verified: move into place.
        if not dest.exists():
            os.chmod(staging, 0o755)  # mkdtemp made it private
            os.replace(staging, dest)
        else:
            for item in list(staging.iterdir()):
                _put(item, dest / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    clear_cache()
    return dest
