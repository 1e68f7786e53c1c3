"""Names in storage and on disk: the one error type, cleaning and joining relative paths, and the
checks every name that comes from outside (a manifest, a listing) passes before it is used to write."""

from __future__ import annotations

import os
import re
from pathlib import Path

_CHUNK = 8 << 20
_THREADS = 8
# Temp files of an in-flight `xtra.fileio` atomic write (".name.XXXX.tmp"): never part of a commit.
_TMP_RE = re.compile(r"^\..+\.tmp$")


class StorageError(RuntimeError):
    """One line naming the URI and what failed."""



def _explain(e: BaseException) -> str:
    msg = re.sub(r"\s*\(Request ID: [^)]*\)", "", str(e))
    return _one_line(msg) or type(e).__name__


def _one_line(x: object) -> str:
    return " ".join(str(x).split())


def _clean(rel: str) -> str:
    rel = str(rel).replace("\\", "/").strip("/")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"storage path {rel!r}: '..' is not allowed (paths are relative to the storage root)")
    return "/".join(parts)


def _join(*parts: str) -> str:
    return "/".join(p for p in (_clean(x) for x in parts) if p)


def _local_files(root: Path) -> list[str]:
    """Regular files below `root` as sorted posix paths, without in-flight atomic-write temp files."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if _TMP_RE.match(f) or not p.is_file():
                continue
            out.append(p.relative_to(root).as_posix())
    return sorted(out)



def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _touch(path: Path) -> None:
    """A new mtime (as a rewritten checkpoint would have), content unchanged."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

