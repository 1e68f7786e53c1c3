"""The record of a committed directory (`_manifest.json`): what files it holds, where their bytes
are, and how a local copy is compared with it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from xtra.storage.names import _CHUNK

MANIFEST = "_manifest.json"
GENERATIONS = "_gen"
MANIFEST_FORMAT = "xtra-dir/1"


@dataclass(frozen=True)
class Entry:
    """A file under a listed prefix: `path` relative to that prefix (posix)."""

    path: str
    size: int
    mtime_ns: int | None


@dataclass(frozen=True)
class FileRecord:
    """One committed file of a directory: where its bytes are, and what they are."""

    key: str  # relative to the directory: "_gen/<generation>/<name>"
    size: int
    sha256: str
    mtime_ns: int  # the uploader's local mtime; a download sets it, so the next sync can skip the file


@dataclass(frozen=True)
class Manifest:
    generation: str  # "<seq:06d>-<random>", seq grows by one per commit
    files: dict[str, FileRecord]
    written: str  # ISO time of the commit, for people

    @property
    def seq(self) -> int:
        return int(self.generation.split("-", 1)[0])

    def to_json(self) -> bytes:
        files = {n: dataclasses.asdict(r) for n, r in sorted(self.files.items())}
        return (json.dumps({"format": MANIFEST_FORMAT, "generation": self.generation, "written": self.written,
                            "files": files}, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        obj = json.loads(data)
        if obj.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"manifest format {obj.get('format')!r} (allowed: {MANIFEST_FORMAT!r})")
        return cls(generation=obj["generation"], written=obj["written"],
                   files={n: FileRecord(**r) for n, r in obj["files"].items()})


@dataclass(frozen=True)
class SyncResult:
    """What a directory upload or download did: names transferred and names left alone."""

    transferred: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed: tuple[str, ...] = ()
    bytes: int = 0



def _matches(local: Path, rec: FileRecord, checksum: bool) -> bool:
    try:
        st = local.stat()
    except FileNotFoundError:
        return False
    if st.st_size != rec.size:
        return False
    if not checksum:
        return st.st_mtime_ns == rec.mtime_ns
    digest = hashlib.sha256()
    with open(local, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == rec.sha256


def _same_stat(local: Path, e: Entry) -> bool:
    try:
        st = local.stat()
    except FileNotFoundError:
        return False
    return e.mtime_ns is not None and (st.st_size, st.st_mtime_ns) == (e.size, e.mtime_ns)


def _in_generations(path: str) -> bool:
    """Whether a path relative to some directory lies under a `_gen/` (objects of a commit)."""
    return GENERATIONS in path.split("/")[:-1]

