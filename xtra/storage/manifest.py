"""The record of a committed directory (`_manifest.json`): what files it holds, where their bytes
are, and how a local copy is compared with it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from xtra.storage.names import CHUNK, StorageError, check_name, check_size

MANIFEST = "_manifest.json"
GENERATIONS = "_gen"
MANIFEST_FORMAT = "xtra-dir/1"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest larger than this is refused unread
MAX_FILES = 100_000  # names one manifest may list
_GENERATION_RE = re.compile(r"^[0-9]{6,12}-[0-9a-f]{1,64}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
    def from_json(cls, data: bytes, where: str = MANIFEST) -> Manifest:
        """Parse and check a manifest read from storage (`where` names it in errors): every file name
        is a relative path inside the directory (`check_name`), every key a generation's object of that
        name, every size bounded. ValueError for a malformed document, StorageError for a refused name."""
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("format") != MANIFEST_FORMAT:
            fmt = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"manifest format {fmt!r} (allowed: {MANIFEST_FORMAT!r})")
        generation, files = obj["generation"], obj["files"]
        if not isinstance(generation, str) or not _GENERATION_RE.match(generation):
            raise ValueError(f"generation {str(generation)[:80]!r} (allowed: NNNNNN-hex)")
        if not isinstance(files, dict) or len(files) > MAX_FILES:
            raise ValueError(f"'files' must be a mapping of at most {MAX_FILES} names")
        records = {}
        for name, rec in files.items():
            check_name(name, where)
            if name == MANIFEST or name.split("/")[0] == GENERATIONS:
                raise StorageError(f"{where}: refused file name {name!r}: reserved for the commit itself")
            r = FileRecord(**rec)
            gen, _, rest = r.key.partition("/")[2].partition("/") if isinstance(r.key, str) else ("", "", "")
            if not (isinstance(r.key, str) and r.key.startswith(GENERATIONS + "/") and _GENERATION_RE.match(gen)
                    and rest == name):
                raise StorageError(f"{where}: refused key {str(r.key)[:200]!r} of {name!r} "
                                   f"(allowed: {GENERATIONS}/<generation>/{name})")
            check_size(r.size, where, name)
            if not isinstance(r.sha256, str) or not _SHA256_RE.match(r.sha256):
                raise ValueError(f"sha256 of {name!r} is not 64 hex digits")
            if isinstance(r.mtime_ns, bool) or not isinstance(r.mtime_ns, int) or not 0 <= r.mtime_ns < 1 << 63:
                raise ValueError(f"mtime_ns of {name!r} is not a non-negative 64-bit integer")
            records[name] = r
        return cls(generation=generation, written=str(obj.get("written", "")), files=records)


@dataclass(frozen=True)
class SyncResult:
    """What a directory upload or download did: names transferred and names left alone."""

    transferred: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed: tuple[str, ...] = ()
    bytes: int = 0



def matches_manifest(local: Path, rec: FileRecord, checksum: bool) -> bool:
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
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == rec.sha256


def same_stat(local: Path, e: Entry) -> bool:
    try:
        st = local.stat()
    except FileNotFoundError:
        return False
    return e.mtime_ns is not None and (st.st_size, st.st_mtime_ns) == (e.size, e.mtime_ns)


def in_generations(path: str) -> bool:
    """Whether a path relative to some directory lies under a `_gen/` (objects of a commit)."""
    return GENERATIONS in path.split("/")[:-1]

