"""Path-based image collections: what files (or tar members) make up each split, read cheaply.

``imagefolder:PATH``: ``PATH/train/<class>/*`` with an optional ``PATH/val/<class>/*`` as the test
split (ImageNet's own layout), or ``PATH/<class>/*`` (a fixed seeded 20% is then held out as test).
``wds:PATTERN``: WebDataset tar shards. PATTERN is a folder written by ``xtra data pack`` (its
``manifest.json`` names the shards), a brace pattern ``/data/in1k/train-{000000..001281}.tar`` or a
glob; without a manifest the test split is the shards beside them named like them with ``train``
replaced by ``val`` (any brace range read as ``*``), else a held-out 20%. A sample is the members
sharing a key: one image (``.jpg .jpeg .png .webp .bmp``) and its label ``.cls`` (an integer).
The same forms work on S3 (``wds:s3://bucket/in1k`` a pack folder, ``wds:s3://bucket/in1k/train-{...}.tar``):
objects are listed once per prefix and read by ranged GETs through pyarrow, with the credentials and
``AWS_ENDPOINT_URL`` of ``xtra.storage``. ``wds:pipe:CMD`` (CMD brace-expanded, one shard per command on
stdout) streams each shard once into ``$XTRA_CACHE/shards/`` and reads it from there.

A listing is one directory walk (or, for a pack, its index file; else one pass over the tar headers),
kept as compact numpy arrays so its memory is a few bytes per image; reading a sample is one file read
or one seek + read in a shard, so any permutation of a split can be read directly (exact resume,
disjoint ranks).
Errors are one line naming the path and what was expected.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import glob
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xtra.data.listing import (
    FolderListing,
    Listing,
    ShardListing,
    is_s3,
    open_shard,
    s3_diagnosis,
    s3_fs,
    s3_parts,
    s3_problem,
)
from xtra.data.sets import DatasetNotFound

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MANIFEST = "manifest.json"
PATH_PREFIXES = ("imagefolder:", "wds:")


class BadCollection(ValueError):
    """A collection's files are not laid out as expected; the message is one line."""


def is_path_collection(name: str) -> bool:
    return name.startswith(PATH_PREFIXES)


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


def _list_s3(folder: str) -> dict[str, tuple[int, int]]:
    """{object name: (size, mtime_ns)} directly under an s3:// prefix, in one listing."""
    import pyarrow.fs as pafs

    bucket, key = s3_parts(folder)
    try:
        infos = s3_fs(bucket, os.getpid()).get_file_info(
            pafs.FileSelector(key, recursive=False, allow_not_found=True))
    except OSError as e:
        raise BadCollection(s3_problem(folder, e)) from None
    found = {i.base_name: (int(i.size), int(i.mtime_ns or 0)) for i in infos if i.type == pafs.FileType.File}
    if not found and (problem := s3_diagnosis(folder)):  # S3 lists a missing bucket as empty
        raise BadCollection(problem)
    return found


def _match_s3(pattern: str) -> tuple[list[str], dict[str, tuple[int, int]]]:
    """The objects a brace pattern / glob (in the last path component) names, listing each prefix once;
    and {url: (size, mtime_ns)} of them."""
    out: list[str] = []
    stats: dict[str, tuple[int, int]] = {}
    listed: dict[str, dict[str, tuple[int, int]]] = {}
    for url in expand_braces(pattern):
        folder, base = url.rsplit("/", 1)
        if folder not in listed:
            listed[folder] = _list_s3(folder)
        names = listed[folder]
        if any(ch in base for ch in "*?["):
            found = sorted(n for n in names if fnmatch.fnmatchcase(n, base))
        elif base in names:
            found = [base]
        elif "{" in pattern:
            raise BadCollection(f"wds:{pattern}: shard {url} does not exist (expected every shard of the range)")
        else:
            found = []
        for n in found:
            out.append(f"{folder}/{n}")
            stats[f"{folder}/{n}"] = names[n]
    return out, stats


def _read_small(path: str) -> bytes:
    """A manifest or index file, local or on S3."""
    if is_s3(path):
        bucket, key = s3_parts(path)
        try:
            with s3_fs(bucket, os.getpid()).open_input_stream(key) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise BadCollection(s3_problem(path, e)) from None
    return Path(path).read_bytes()


@contextlib.contextmanager
def _tar_for_scan(path: str):
    """The shard opened for one pass over its headers: seeking past members on a local file; on S3 one
    buffered sequential read (thousands of tiny ranged GETs would cost more than the bytes)."""
    if not is_s3(path):
        with tarfile.open(path, "r:") as tar:
            yield tar
        return
    bucket, key = s3_parts(path)
    with s3_fs(bucket, os.getpid()).open_input_stream(key, buffer_size=8 << 20) as f, \
            tarfile.open(fileobj=f, mode="r|") as tar:
        yield tar


def index_shard(path: str, with_names: bool = False) -> list[tuple[str, str, int, int, int | None, str]]:
    """[(key, ext, offset, size, label, name)] of a shard's images, from its tar headers and .cls members."""
    images: dict[str, tuple[str, int, int]] = {}
    labels: dict[str, int] = {}
    names: dict[str, str] = {}
    try:
        with _tar_for_scan(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                dirname = os.path.dirname(member.name)
                stem, dot, ext = base.partition(".")
                key = f"{dirname}/{stem}" if dirname else stem
                ext = ext.lower()
                if f".{ext}" in IMAGE_EXTS:
                    _cap(path, member, MAX_IMAGE_BYTES)
                    images[key] = (ext, member.offset_data, member.size)
                elif ext == "cls":
                    _cap(path, member, MAX_LABEL_BYTES)
                    raw = tar.extractfile(member).read(MAX_LABEL_BYTES).decode(errors="replace").strip()
                    try:
                        labels[key] = int(raw)
                    except ValueError:
                        raise BadCollection(f"{path}: {member.name} holds {raw[:20]!r} "
                                            "(expected an integer class label)") from None
                elif ext == "name" and with_names:
                    _cap(path, member, MAX_NAME_BYTES)
                    names[key] = tar.extractfile(member).read(MAX_NAME_BYTES).decode(errors="replace")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BadCollection(f"{path}: not a readable tar shard ({type(e).__name__}: {e})") from None
    out = []
    for key, (ext, off, size) in images.items():
        if key not in labels:
            raise BadCollection(f"{path}: sample {key!r} has an image but no {key}.cls label "
                                "(expected WebDataset members <key>.jpg + <key>.cls)")
        out.append((key, ext, off, size, labels[key], names.get(key, "")))
    return out


# A shard's members are read only up to these sizes (a shard is data someone else may have written).
MAX_LABEL_BYTES = 64  # <key>.cls: an integer
MAX_NAME_BYTES = 4096  # <key>.name: a class name
MAX_IMAGE_BYTES = 256 << 20  # one encoded image


def _cap(path: str, member: tarfile.TarInfo, limit: int) -> None:
    if member.size > limit:
        raise BadCollection(f"{path}: member {member.name[:200]!r} is {member.size} bytes "
                            f"(allowed: at most {limit} for a .{member.name.rpartition('.')[2][:10]} member)")


def index_array(rows_per_shard: list[list[tuple]]) -> np.ndarray:
    """One structured array (shard, offset, size, label, key) from ``index_shard`` rows of each shard:
    what `xtra data pack` stores beside the manifest, so a reader never scans the shards."""
    flat = [(s, off, size, label, f"{key}.{ext}".encode())
            for s, rows in enumerate(rows_per_shard) for key, ext, off, size, label, _ in rows]
    width = max((len(r[4]) for r in flat), default=1)
    dtype = np.dtype([("shard", "<i4"), ("offset", "<i8"), ("size", "<i8"), ("label", "<i8"), ("key", f"S{width}")])
    return np.array(flat, dtype=dtype)


def _listing_from_index(index: np.ndarray, shards: list[str]) -> ShardListing:
    return ShardListing(index["label"].astype(np.int64), tuple(shards), index["shard"].astype(np.int32),
                        index["offset"].astype(np.int64), index["size"].astype(np.int64), index["key"].copy())


def _shard_listing(shards: list[str]) -> ShardListing:
    return _listing_from_index(index_array([index_shard(path) for path in shards]), shards)


# Shards from a command (pipe:CMD): its stdout cannot be seeked, so each shard is streamed once into a
# node-local cache, named by a hash of the command and renamed into place when complete, and read
# from there. A command is assumed to give the same bytes every time.


def shard_cache() -> Path:
    return Path(os.environ.get("XTRA_CACHE") or "~/.cache/xtra").expanduser() / "shards"


def _piped(command: str) -> tuple[str, str]:
    """(local path, sha256) of a command's output, run once per node."""
    folder = shard_cache()
    final = folder / f"{hashlib.sha256(command.encode()).hexdigest()[:32]}.tar"
    digest_file = final.with_suffix(".sha256")
    if final.is_file() and digest_file.is_file():
        return str(final), digest_file.read_text().strip()
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{final.stem}.{os.getpid()}.{threading.get_ident()}.part"
    digest = hashlib.sha256()
    try:
        with open(part, "wb") as out, subprocess.Popen(command, shell=True, stdout=subprocess.PIPE,  # noqa: S602
                                                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            while chunk := proc.stdout.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            code = proc.wait()
        if code != 0:
            raise BadCollection(f"wds:pipe:{command}: the command failed (exit status {code}"
                                + (f": {err[-1].strip()[:200]})" if err else ")"))
        if not tarfile.is_tarfile(part):
            raise BadCollection(f"wds:pipe:{command}: its output ({part.stat().st_size} bytes) is not a tar shard "
                                "(expected a command that writes one shard to stdout, e.g. pipe:aws s3 cp URL -)")
        digest_file.write_text(digest.hexdigest())
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
    return str(final), digest.hexdigest()


# A pipe: source runs a shell command: only when this invocation asked for it (docs/security.md).
PIPE_ENV = "XTRA_ALLOW_PIPE"  # "1": this process may run wds:pipe: commands (`--allow-commands` sets it)


def is_command(name: str) -> bool:
    """Whether a data name runs a shell command when opened (``wds:pipe:CMD``)."""
    return str(name).strip().startswith("wds:pipe:")


def commands_allowed() -> bool:
    return os.environ.get(PIPE_ENV, "").strip() == "1"


def refuse_command(name: str) -> None:
    """BadCollection (one line) unless this invocation opted in to running data commands."""
    if not commands_allowed():
        shown = name if len(name) <= 120 else name[:117] + "..."
        raise BadCollection(f"data.name={shown!r} runs a shell command; refused unless you ask for it in this "
                            f"run: pass --allow-commands to `xtra study run`, or set {PIPE_ENV}=1")


def _pipe_shards(spec: str) -> tuple[list[str], dict[str, str]]:
    """(local cached shards, {shard: sha256}) of ``pipe:CMD`` with CMD brace-expanded, 4 at a time."""
    from concurrent.futures import ThreadPoolExecutor

    refuse_command("wds:" + spec)
    commands = [c.strip() for c in expand_braces(spec[len("pipe:"):])]
    if not commands or not all(commands):
        raise BadCollection("wds:pipe: needs a command that writes a tar shard to stdout "
                            "(e.g. wds:pipe:aws s3 cp s3://bucket/train-{0000..0099}.tar -)")
    with ThreadPoolExecutor(min(4, len(commands))) as pool:
        got = list(pool.map(_piped, commands))
    return [path for path, _ in got], dict(got)


def wds_spec(name: str) -> str:
    raw = name[len("wds:"):]
    if not raw:
        raise BadCollection("data.name='wds:' needs a shard pattern or a packed folder (wds:PATTERN)")
    if raw.startswith(("http://", "https://", "gs://", "file://")):
        raise BadCollection(f"data.name={name!r}: shards are read from a local path, s3://BUCKET/... or pipe:COMMAND "
                            "(for this URL use a command, e.g. wds:pipe:curl -sf URL or wds:pipe:gsutil cat URL)")
    return raw if raw.startswith(("pipe:", "s3://")) else os.path.expanduser(raw)


@dataclass(frozen=True)
class _Shards:
    train: list[str]
    test: list[str]
    manifest: dict | None
    folder: str  # the pack folder holding the manifest ("" without one)
    stats: dict[str, tuple]  # shard -> (size, mtime_ns or content sha256): the stamp, and the fingerprint


def _is_folder(spec: str) -> bool:
    if is_s3(spec):  # an S3 prefix with no pattern and not a .tar: a pack folder
        return not any(ch in spec for ch in "{*?[") and not spec.endswith(".tar")
    return os.path.isdir(spec)


def _wds_files(spec: str) -> _Shards:
    """Where the train and test shards are (checked to exist), with the manifest when there is one."""
    if spec.startswith("pipe:"):
        train, digests = _pipe_shards(spec)
        return _Shards(train, [], None, "", {p: (os.path.getsize(p), digests[p]) for p in train})
    s3 = is_s3(spec)
    if _is_folder(spec):
        folder = spec.rstrip("/")
        path = f"{folder}/{MANIFEST}"
        try:
            manifest = json.loads(_read_small(path))
        except FileNotFoundError:
            raise BadCollection(f"wds:{spec}: folder has no {MANIFEST} (expected a folder written by "
                                "`xtra data pack`, or a shard pattern such as wds:/data/train-{000000..000099}.tar)"
                                ) from None
        except json.JSONDecodeError as e:
            raise BadCollection(f"{path}: not an xtra pack manifest (JSONDecodeError: {e})") from None
        try:
            splits = manifest["splits"]
            wanted = {f"{folder}/{s['name']}": int(s["bytes"]) for split in ("train", "val")
                      for s in splits.get(split, {}).get("shards", [])}
            train = [f"{folder}/{s['name']}" for s in splits["train"]["shards"]]
            test = [f"{folder}/{s['name']}" for s in splits.get("val", {}).get("shards", [])]
        except (KeyError, TypeError, ValueError) as e:
            raise BadCollection(f"{path}: not an xtra pack manifest ({type(e).__name__}: {e})") from None
        if s3:
            listed = _list_s3(folder)
            stats = {p: listed[p.rsplit("/", 1)[1]] for p in wanted if p.rsplit("/", 1)[1] in listed}
        else:
            stats = {p: (st.st_size, st.st_mtime_ns) for p in wanted if (st := _stat(p)) is not None}
        for shard, size in wanted.items():
            if shard not in stats:
                raise BadCollection(f"{path}: names shard {shard}, which does not exist")
            if stats[shard][0] != size:
                raise BadCollection(f"{shard}: {stats[shard][0]} bytes, but {path} says {size} "
                                    "(an unfinished copy or another pack; copy the shard again)")
        return _Shards(train, test, manifest, folder, stats)
    if s3:
        train, stats = _match_s3(spec)
    else:
        train = _match(spec)
    if not train:
        raise BadCollection(f"wds:{spec} matches no files (expected tar shards, e.g. "
                            "wds:/data/in1k/train-{000000..001281}.tar or a folder written by `xtra data pack`)")
    test: list[str] = []
    head, tail = spec.rsplit("/", 1) if "/" in spec else ("", spec)
    if "train" in tail:  # train-{000000..001281}.tar -> every val-*.tar beside it
        sibling = re.sub(r"\{[^{}]*\}", "*", tail.replace("train", "val"))
        if s3:
            test, more = _match_s3(f"{head}/{sibling}")
            stats.update(more)
        else:
            test = _match(os.path.join(head, sibling))
    if not s3:
        stats = {p: (st.st_size, st.st_mtime_ns) for p in train + test if (st := _stat(p)) is not None}
    return _Shards(train, test, None, "", stats)


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _split_listing(shards: _Shards, split: str, paths: list[str]) -> ShardListing:
    """From the pack's index when it has one (checked against its sha256), else by scanning every shard."""
    entry = (shards.manifest or {}).get("splits", {}).get(split, {}).get("index")
    if not entry:
        return _shard_listing(paths)
    path = f"{shards.folder}/{entry['name']}"
    try:
        data = _read_small(path)
    except FileNotFoundError:
        raise BadCollection(f"{shards.folder}/{MANIFEST}: names index {path}, which does not exist") from None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise BadCollection(f"{path}: sha256 differs from the manifest's (an unfinished copy; copy it again)")
    index = np.load(io.BytesIO(data), allow_pickle=False)
    if len(index) and int(index["shard"].max()) >= len(paths):
        raise BadCollection(f"{path}: refers to shard {int(index['shard'].max())} of {len(paths)}")
    return _listing_from_index(index, paths)


@functools.lru_cache(maxsize=4)
def _open_wds(spec: str, stamp: tuple) -> Collection:
    shards = _wds_files(spec)
    train = _split_listing(shards, "train", shards.train)
    if not len(train):
        raise BadCollection(f"wds:{spec}: the shards hold no images (expected members <key>.jpg|png + <key>.cls)")
    test = _split_listing(shards, "val", shards.test) if shards.test else None
    manifest = shards.manifest
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
        for split, paths in (("train", shards.train), ("val", shards.test)):
            for path in paths:
                size, extra = shards.stats[path][:2]
                name = extra if spec.startswith("pipe:") else path.rsplit("/", 1)[-1]  # pipe: the content's sha256
                digest.update(f"{split}/{name}\t{size}\n".encode())
    return Collection(f"wds:{spec}", "wds", spec, classes, train, test, 0, digest.hexdigest()[:16])


def _wds_stamp(spec: str) -> tuple:
    if spec.startswith("pipe:"):
        return (spec,)  # the cache is keyed by the command
    try:
        shards = _wds_files(spec)
    except BadCollection:
        return ()
    return tuple(sorted(shards.stats.items()))


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
    stamp = _wds_stamp(spec)
    if not stamp:
        _wds_files(spec)  # a clear error before anything else
    return _open_wds(spec, stamp)


def clear() -> None:
    _open_folder.cache_clear()
    _open_wds.cache_clear()
    open_shard.cache_clear()
    s3_fs.cache_clear()
