"""Names in storage and on disk: the one error type, cleaning and joining relative paths, and the
checks every name that comes from outside (a manifest, a listing) passes before it is used to write."""

from __future__ import annotations

import os
import re
from pathlib import Path

CHUNK = 8 << 20
THREADS = 8
MAX_NAME_CHARS = 1024  # a file name from storage (a relative path), in characters
MAX_PART_CHARS = 255  # one component of it (the usual filesystem limit)
MAX_FILE_BYTES = 1 << 40  # the largest file a manifest or listing may announce (1 TiB)
PLAIN_GROWTH = 64 << 20  # a plain file may be rewritten longer between listing and read; more is refused
# Temp files of an in-flight `xtra.fileio` atomic write (".name.XXXX.tmp"): never part of a commit.
_TMP_RE = re.compile(r"^\..+\.tmp$")


class StorageError(RuntimeError):
    """One line naming the URI and what failed."""


def check_name(name: object, where: str) -> str:
    """A name read from storage (a manifest entry, a listed key), before it names a local file.

    Allowed: a non-empty relative posix path, already normal (no "", ".", ".." parts, no leading
    or trailing "/", no backslash or NUL), at most MAX_NAME_CHARS long (MAX_PART_CHARS a part).
    Anything else is a StorageError naming `where` (the manifest or listing it came from)."""
    def bad(why: str) -> StorageError:
        return StorageError(f"{where}: refused file name {str(name)[:200]!r}: {why} "
                            "(allowed: a relative path inside the directory, no '..', no absolute path)")

    if not isinstance(name, str) or not name:
        raise bad("not a non-empty string")
    if len(name) > MAX_NAME_CHARS:
        raise bad(f"longer than {MAX_NAME_CHARS} characters")
    if "\\" in name or "\0" in name or any(ord(c) < 32 for c in name):
        raise bad("a backslash or control character")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise bad("an absolute path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise bad("not a normal relative path")
    if any(len(p) > MAX_PART_CHARS for p in parts):
        raise bad(f"a part longer than {MAX_PART_CHARS} characters")
    return name


def check_size(size: object, where: str, name: str) -> int:
    """A size read from storage: an int in [0, MAX_FILE_BYTES]."""
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_BYTES:
        raise StorageError(f"{where}: refused size {str(size)[:40]!r} of {name!r} "
                           f"(allowed: an integer from 0 to {MAX_FILE_BYTES})")
    return size


def local_target(root: Path, name: str, where: str) -> Path:
    """`root / name` for a checked name, refused if an existing part of it is a symlink or leaves
    `root` (a planted link would redirect the write outside the directory)."""
    check_name(name, where)
    root = Path(root)
    target = root / name
    node = root
    for part in name.split("/"):
        node = node / part
        if node.is_symlink():
            raise StorageError(f"{where}: refused file name {name!r}: {node} is a symbolic link "
                               "(a download never writes through a link)")
    try:
        real_root = root.resolve()
        if not target.resolve().is_relative_to(real_root):
            raise StorageError(f"{where}: refused file name {name!r}: it resolves outside {root}")
    except OSError as e:
        raise StorageError(f"{where}: refused file name {name!r}: {one_line(e)}") from None
    return target



def explain_error(e: BaseException) -> str:
    msg = re.sub(r"\s*\(Request ID: [^)]*\)", "", str(e))
    return one_line(msg) or type(e).__name__


def one_line(x: object) -> str:
    return " ".join(str(x).split())


def clean_key(rel: str) -> str:
    rel = str(rel).replace("\\", "/").strip("/")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"storage path {rel!r}: '..' is not allowed (paths are relative to the storage root)")
    return "/".join(parts)


def join_key(*parts: str) -> str:
    return "/".join(p for p in (clean_key(x) for x in parts) if p)


def local_files(root: Path) -> list[str]:
    """Regular files below `root` as sorted posix paths, without in-flight atomic-write temp files."""
    out = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if _TMP_RE.match(f) or not p.is_file():
                continue
            out.append(p.relative_to(root).as_posix())
    return sorted(out)



def same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def touch(path: Path) -> None:
    """A new mtime (as a rewritten checkpoint would have), content unchanged."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

