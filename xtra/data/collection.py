"""Path-based image collections: what files (or tar members) make up each split, read cheaply.

``imagefolder:PATH``: ``PATH/train/<class>/*`` with an optional ``PATH/val/<class>/*`` as the test
split (ImageNet's own layout), or ``PATH/<class>/*`` (a fixed seeded 20% is then held out as test).
``wds:PATTERN``: WebDataset tar shards. PATTERN is a folder written by ``xtra data pack`` (its
``manifest.json`` names the shards), a brace pattern ``/data/in1k/train-{000000..001281}.tar`` or a
glob; without a manifest the test split is the shards beside them named like them with ``train``
replaced by ``val`` (any brace range read as ``*``), else a held-out 20%. A sample is the members
sharing a key: one image (``.jpg .jpeg .png .webp .bmp``) and its label ``.cls`` (an integer).

A listing is one directory walk (or one pass over the tar headers), kept as compact numpy arrays so
its memory is a few bytes per image; reading a sample is one file read or one seek + read in a
shard, so any permutation of a split can be read directly (exact resume, disjoint ranks).
Errors are one line naming the path and what was expected.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MANIFEST = "manifest.json"
PATH_PREFIXES = ("imagefolder:", "wds:")


class BadCollection(ValueError):
    """A collection's files are not laid out as expected; the message is one line."""


def is_path_collection(name: str) -> bool:
    return name.startswith(PATH_PREFIXES)


class Listing:
    """One split: labels plus where each sample's bytes are. Subclasses read them."""

    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def read(self, i: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def name(self, i: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def take(self, idx: np.ndarray) -> Listing:  # pragma: no cover - abstract
        raise NotImplementedError


class FolderListing(Listing):
    """Files under ``base``: relative paths as utf-8 bytes in one numpy array."""

    def __init__(self, labels: np.ndarray, base: str, paths: np.ndarray) -> None:
        self.labels, self.base, self.paths = labels, base, paths

    def read(self, i: int) -> bytes:
        with open(self.name(i), "rb") as f:
            return f.read()

    def name(self, i: int) -> str:
        return os.path.join(self.base, self.paths[i].decode())

    def take(self, idx: np.ndarray) -> FolderListing:
        return FolderListing(self.labels[idx], self.base, self.paths[idx])


class ShardListing(Listing):
    """Tar members: (shard, byte offset, size) per sample, read with one seek."""

    def __init__(self, labels: np.ndarray, shards: tuple[str, ...], shard: np.ndarray, offset: np.ndarray,
                 size: np.ndarray, keys: np.ndarray) -> None:
        self.labels, self.shards, self.shard, self.offset, self.size, self.keys = (
            labels, shards, shard, offset, size, keys)

    def read(self, i: int) -> bytes:
        f = _open_shard(self.shards[int(self.shard[i])], os.getpid())
        f.seek(int(self.offset[i]))
        data = f.read(int(self.size[i]))
        if len(data) != int(self.size[i]):
            raise OSError(f"short read ({len(data)} of {int(self.size[i])} bytes)")
        return data

    def name(self, i: int) -> str:
        return f"{self.shards[int(self.shard[i])]}:{self.keys[i].decode()}"

    def take(self, idx: np.ndarray) -> ShardListing:
        return ShardListing(self.labels[idx], self.shards, self.shard[idx], self.offset[idx], self.size[idx],
                            self.keys[idx])


class ConcatListing(Listing):
    """Several listings read as one (one loader decodes every split of a collection)."""

    def __init__(self, parts: list[Listing]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.labels = np.concatenate([p.labels for p in parts]) if parts else np.empty(0, dtype=np.int64)

    def _where(self, i: int) -> tuple[Listing, int]:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k], i - int(self.starts[k])

    def read(self, i: int) -> bytes:
        part, j = self._where(i)
        return part.read(j)

    def name(self, i: int) -> str:
        part, j = self._where(i)
        return part.name(j)


@functools.lru_cache(maxsize=8)
def _open_shard(path: str, pid: int):
    """An open handle per shard and process: a forked loader worker must not share its parent's file
    offset, hence the pid in the key."""
    return open(path, "rb")  # noqa: SIM115 - kept open on purpose, closed at exit


@dataclass(frozen=True, eq=False)
class Collection:
    """A located, listed collection. ``test`` is None for a flat folder (the caller holds out 20%)."""

    name: str  # the data.name it was opened from
    kind: str  # imagefolder | wds
    root: str  # resolved folder or pattern
    classes: tuple[str, ...]
    train: Listing
    test: Listing | None
    ignored: int  # non-image files seen and skipped
    fingerprint: str


# ---------------------------------------------------------------------------------------------
# ImageFolder


def _folder_root(name: str) -> Path:
    raw = name[len("imagefolder:"):]
    if not raw:
        raise BadCollection("data.name='imagefolder:' needs a path (imagefolder:PATH)")
    return Path(raw).expanduser()


def folder_layout(path: Path) -> tuple[Path, Path | None]:
    """(train folder, test folder or None). Raises if the folder is missing."""
    if not path.is_dir():
        from xtra.data import DatasetNotFound

        raise DatasetNotFound(f"imagefolder:{path}", [str(path)])
    train, val = path / "train", path / "val"
    if train.is_dir():
        return train, (val if val.is_dir() else None)
    return path, None


def _class_dirs(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def _scan_split(folder: Path, classes: list[str] | None) -> tuple[list[str], list[tuple[str, str, int]], int]:
    """(class names, [(class, file name, size)], non-image files) of one split folder."""
    dirs = _class_dirs(folder)
    if not dirs:
        raise BadCollection(f"image folder {folder} has no class subfolders (expected {folder}/<class>/*.jpg|png)")
    names = [d.name for d in dirs]
    if classes is not None:
        unknown = [n for n in names if n not in set(classes)]
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise BadCollection(f"{folder}: classes {shown} are not train classes "
                                f"(expected the class folders of {folder.parent / 'train'})")
    files: list[tuple[str, str, int]] = []
    ignored = 0
    for d in dirs:
        found = 0
        with os.scandir(d.path) as it:
            for e in sorted(it, key=lambda e: e.name):
                if not e.is_file() or e.name.startswith("."):
                    continue
                if os.path.splitext(e.name)[1].lower() in IMAGE_EXTS:
                    files.append((d.name, e.name, e.stat().st_size))
                    found += 1
                else:
                    ignored += 1
        if not found:
            raise BadCollection(f"class folder {d.path} has no images (expected files ending in "
                                f"{', '.join(IMAGE_EXTS)})")
    return names, files, ignored


def _stamp(folder: Path) -> tuple:
    """mtimes of the split and class folders: a changed listing invalidates the cache."""
    out = []
    for split in (folder, folder / "train", folder / "val"):
        if split.is_dir():
            out.append((str(split), split.stat().st_mtime_ns))
            out += [(e.path, e.stat().st_mtime_ns) for e in _class_dirs(split)]
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _open_folder(path: str, stamp: tuple) -> Collection:
    root = Path(path)
    train_dir, test_dir = folder_layout(root)
    classes, train_files, ignored = _scan_split(train_dir, None)
    index = {c: i for i, c in enumerate(classes)}
    digest = hashlib.sha256(b"imagefolder\n")

    def listing(folder: Path, files: list[tuple[str, str, int]], split: str) -> FolderListing:
        for c, f, size in files:
            digest.update(f"{split}/{c}/{f}\t{size}\n".encode())
        paths = np.array([f"{c}/{f}".encode() for c, f, _ in files]) if files else np.empty(0, dtype="S1")
        labels = np.fromiter((index[c] for c, _, _ in files), dtype=np.int64, count=len(files))
        return FolderListing(labels, str(folder), paths)

    train = listing(train_dir, train_files, "train")
    test = None
    if test_dir is not None:
        _, test_files, more = _scan_split(test_dir, classes)
        ignored += more
        test = listing(test_dir, test_files, "val")
    return Collection(f"imagefolder:{path}", "imagefolder", str(root), tuple(classes), train, test, ignored,
                      digest.hexdigest()[:16])


# ---------------------------------------------------------------------------------------------
# WebDataset shards


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's brace notation: ``a-{000..012}.tar`` (zero-padded ranges) and ``{x,y}``."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    head, tail, body = pattern[:m.start()], pattern[m.end():], m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [p for item in items for p in expand_braces(head + item + tail)]


def _match(pattern: str) -> list[str]:
    out: list[str] = []
    for p in expand_braces(pattern):
        if any(ch in p for ch in "*?["):
            out += sorted(glob.glob(os.path.expanduser(p)))
        elif os.path.isfile(os.path.expanduser(p)):
            out.append(os.path.expanduser(p))
        elif "{" in pattern:  # a named shard of a range that is missing
            raise BadCollection(f"wds:{pattern}: shard {p} does not exist (expected every shard of the range)")
    return out


def _index_shard(path: str, with_names: bool = False) -> list[tuple[str, str, int, int, int | None, str]]:
    """[(key, ext, offset, size, label, name)] of a shard's images, from its tar headers and .cls members."""
    images: dict[str, tuple[str, int, int]] = {}
    labels: dict[str, int] = {}
    names: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                dirname = os.path.dirname(member.name)
                stem, dot, ext = base.partition(".")
                key = f"{dirname}/{stem}" if dirname else stem
                ext = ext.lower()
                if f".{ext}" in IMAGE_EXTS:
                    images[key] = (ext, member.offset_data, member.size)
                elif ext == "cls":
                    raw = tar.extractfile(member).read().decode().strip()
                    try:
                        labels[key] = int(raw)
                    except ValueError:
                        raise BadCollection(f"{path}: {member.name} holds {raw[:20]!r} "
                                            "(expected an integer class label)") from None
                elif ext == "name" and with_names:
                    names[key] = tar.extractfile(member).read().decode()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BadCollection(f"{path}: not a readable tar shard ({type(e).__name__}: {e})") from None
    out = []
    for key, (ext, off, size) in images.items():
        if key not in labels:
            raise BadCollection(f"{path}: sample {key!r} has an image but no {key}.cls label "
                                "(expected WebDataset members <key>.jpg + <key>.cls)")
        out.append((key, ext, off, size, labels[key], names.get(key, "")))
    return out


def _shard_listing(shards: list[str]) -> tuple[ShardListing, list[tuple[str, int]]]:
    shard_i, offsets, sizes, labels, keys = [], [], [], [], []
    stats = []
    for s, path in enumerate(shards):
        rows = _index_shard(path)
        stats.append((os.path.basename(path), os.path.getsize(path)))
        for key, ext, off, size, label, _ in rows:
            shard_i.append(s)
            offsets.append(off)
            sizes.append(size)
            labels.append(label)
            keys.append(f"{key}.{ext}".encode())
    return ShardListing(np.asarray(labels, dtype=np.int64), tuple(shards), np.asarray(shard_i, dtype=np.int32),
                        np.asarray(offsets, dtype=np.int64), np.asarray(sizes, dtype=np.int64),
                        np.asarray(keys) if keys else np.empty(0, dtype="S1")), stats


def wds_spec(name: str) -> str:
    raw = name[len("wds:"):]
    if not raw:
        raise BadCollection("data.name='wds:' needs a shard pattern or a packed folder (wds:PATTERN)")
    if raw.startswith(("pipe:", "s3://", "http://", "https://", "gs://")):
        raise BadCollection(f"data.name={name!r}: only local shards are supported (a folder, a brace pattern or a "
                            "glob on a filesystem every worker can read, e.g. a shared mount); "
                            "remote URLs are not read")
    return os.path.expanduser(raw)


def _wds_files(spec: str) -> tuple[list[str], list[str], dict | None]:
    """(train shards, test shards, manifest or None)."""
    if os.path.isdir(spec):
        path = os.path.join(spec, MANIFEST)
        if not os.path.isfile(path):
            raise BadCollection(f"wds:{spec}: folder has no {MANIFEST} (expected a folder written by "
                                "`xtra data pack`, or a shard pattern such as wds:/data/train-{000000..000099}.tar)")
        try:
            manifest = json.loads(Path(path).read_text())
            splits = manifest["splits"]
            train = [os.path.join(spec, s["name"]) for s in splits["train"]["shards"]]
            test = [os.path.join(spec, s["name"]) for s in splits.get("val", {}).get("shards", [])]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise BadCollection(f"{path}: not an xtra pack manifest ({type(e).__name__}: {e})") from None
        for shard in train + test:
            if not os.path.isfile(shard):
                raise BadCollection(f"{path}: names shard {shard}, which does not exist")
        return train, test, manifest
    train = _match(spec)
    if not train:
        raise BadCollection(f"wds:{spec} matches no files (expected tar shards, e.g. "
                            "wds:/data/in1k/train-{000000..001281}.tar or a folder written by `xtra data pack`)")
    test: list[str] = []
    if "train" in os.path.basename(spec):  # train-{000000..001281}.tar -> every val-*.tar beside it
        head, tail = os.path.split(spec)
        test = _match(os.path.join(head, re.sub(r"\{[^{}]*\}", "*", tail.replace("train", "val"))))
    return train, test, None


@functools.lru_cache(maxsize=4)
def _open_wds(spec: str, stamp: tuple) -> Collection:
    train_files, test_files, manifest = _wds_files(spec)
    train, train_stats = _shard_listing(train_files)
    if not len(train):
        raise BadCollection(f"wds:{spec}: the shards hold no images (expected members <key>.jpg|png + <key>.cls)")
    test = None
    test_stats: list = []
    if test_files:
        test, test_stats = _shard_listing(test_files)
    n_classes = int(max(train.labels.max(), test.labels.max() if test is not None and len(test) else 0)) + 1
    if manifest is not None and manifest.get("classes"):
        classes = tuple(manifest["classes"])
        if n_classes > len(classes):
            raise BadCollection(f"wds:{spec}: label {n_classes - 1} out of range for the manifest's "
                                f"{len(classes)} classes")
    else:
        classes = tuple(str(i) for i in range(n_classes))
    if test is not None and len(test) and int(test.labels.min()) < 0:
        raise BadCollection(f"wds:{spec}: negative label in the val shards (expected 0..{len(classes) - 1})")
    digest = hashlib.sha256(b"wds\n")
    if manifest is not None:  # the pack's own checksums: the content, wherever it lives
        for split in ("train", "val"):
            for s in manifest["splits"].get(split, {}).get("shards", []):
                digest.update(f"{split}/{s['name']}\t{s['bytes']}\t{s.get('sha256', '')}\n".encode())
    else:
        for split, stats in (("train", train_stats), ("val", test_stats)):
            for base, size in stats:
                digest.update(f"{split}/{base}\t{size}\n".encode())
    return Collection(f"wds:{spec}", "wds", spec, classes, train, test, 0, digest.hexdigest()[:16])


def _wds_stamp(spec: str) -> tuple:
    try:
        train, test, _ = _wds_files(spec)
    except BadCollection:
        return ()
    return tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in train + test)


# ---------------------------------------------------------------------------------------------


def open_collection(name: str) -> Collection:
    """List a path-based collection (memoized while its folders/shards are unchanged). Raises
    ``BadCollection`` / ``DatasetNotFound`` with one line naming the path and what was expected."""
    if name.startswith("imagefolder:"):
        root = _folder_root(name)
        folder_layout(root)
        resolved = root.resolve()
        return _open_folder(str(resolved), _stamp(resolved))
    spec = wds_spec(name)
    if not os.path.isdir(spec):
        _wds_files(spec)  # a clear error before anything else
    return _open_wds(spec, _wds_stamp(spec))


def clear() -> None:
    _open_folder.cache_clear()
    _open_wds.cache_clear()
    _open_shard.cache_clear()
