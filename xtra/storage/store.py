"""The `Storage` object: a root in some filesystem, its paths, and its plain files (each written
whole and atomically); committed directories come from `CommittedDirs` (`xtra.storage.commits`)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from xtra.fileio import atomic_path, atomic_write_bytes
from xtra.storage.backends import resolve
from xtra.storage.commits import CommittedDirs
from xtra.storage.manifest import Entry, FileRecord
from xtra.storage.names import CHUNK, StorageError, clean_key, explain_error, same_dir

PARSE_READS = 4  # reads of a file whose bytes do not parse before it counts as broken


@dataclass(frozen=True)
class Storage(CommittedDirs):
    """A root in some filesystem: `fs` (pyarrow) and `base` (a path on it, no scheme), named by `uri`.

    All paths taken by methods are posix paths relative to the root ("" = the root itself).
    """

    uri: str
    fs: pafs.FileSystem
    base: str
    kind: str  # "local" | "s3" | "gcs" | "fsspec"

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_uri(cls, uri: str | os.PathLike[str], *, connect_timeout: float | None = None,
                 attempts: int | None = None) -> Storage:
        """Resolve a URI: a local path, `file://`, `s3://bucket/prefix`, `gs://bucket/prefix`, or
        any other scheme fsspec knows (its filesystem wrapped for pyarrow).

        `connect_timeout`/`attempts` shorten the object-store client's patience (used by `check`)."""
        uri, fs, base, kind = resolve(uri, connect_timeout, attempts)
        return cls(uri=uri, fs=fs, base=base, kind=kind)

    def __reduce__(self) -> tuple[Any, ...]:
        # Each process resolves its own credentials and endpoint from its environment.
        return (Storage.from_uri, (self.uri,))

    # ---- paths ---------------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        """The path on `self.fs` of `rel`."""
        rel = clean_key(rel)
        return f"{self.base.rstrip('/')}/{rel}" if rel else self.base

    def uri_of(self, rel: str = "") -> str:
        rel = clean_key(rel)
        return f"{self.uri.rstrip('/')}/{rel}" if rel else self.uri

    def sub(self, rel: str) -> Storage:
        """The storage rooted at `rel` below this one (same filesystem object)."""
        return Storage(uri=self.uri_of(rel), fs=self.fs, base=self.path(rel), kind=self.kind)

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def local_path(self, rel: str = "") -> Path | None:
        """The OS path of `rel` when this storage is a local or shared filesystem, else None."""
        return Path(self.path(rel)) if self.is_local else None

    def is_directory_itself(self, local_dir: str | os.PathLike[str], rel: str) -> bool:
        """Whether `local_dir` IS directory `rel` of this (local) storage: a trial running where the
        study's storage is, writing its files in place. Uploads and downloads between the two are
        then no-ops, and its files are plain files (each atomic on its own, no commit)."""
        return self.is_local and same_dir(Path(local_dir), Path(self.path(rel)))

    def ray_storage(self) -> tuple[str, pafs.FileSystem | None]:
        """`(storage_path, storage_filesystem)` for `ray.tune.RunConfig` / `ray.train.RunConfig`.

        Ray takes a scheme-less path together with the filesystem object, so it writes through the
        same endpoint and credentials as this module; a local path goes without a filesystem."""
        return (self.base, None) if self.is_local else (self.base, self.fs)

    # ---- plain files ---------------------------------------------------------------------------
    def exists(self, rel: str = "") -> bool:
        return self._info(rel).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self._info(rel).type == pafs.FileType.File

    def read_bytes(self, rel: str, *, limit: int | None = None) -> bytes:
        """The bytes of a file; FileNotFoundError (naming the URI) if it is not there. With `limit`, a
        file longer than `limit` bytes is a StorageError (read no further than that)."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                if limit is None:
                    return f.read()
                # read(n) may return fewer bytes than asked before the end (an S3 stream returns what one
                # ranged response held): read until the end or past the limit, never trust one call
                parts, got = [], 0
                while got <= limit:
                    part = f.read(limit + 1 - got)
                    if not part:
                        break
                    parts.append(part)
                    got += len(part)
                data = b"".join(parts)
            if len(data) > limit:
                raise StorageError(f"{self.uri_of(rel)}: refused: longer than {limit} bytes")
            return data
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri_of(rel)}: no such file") from None
        except OSError as e:
            raise self._error(rel, "read", e) from None

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_parsed(self, rel: str, parse: Callable[[bytes], Any], *, limit: int | None = None) -> Any:
        """`parse` of a file's bytes. An S3 read is a size lookup then ranged GETs, so a file replaced
        while it is read (a manifest being committed, a lease renewed) can come back torn: bytes that
        `parse` refuses (ValueError, KeyError, TypeError) are read again, and only bytes that read the
        same twice (or a file torn on every one of PARSE_READS reads) raise parse's error."""
        previous, error = None, None
        for _ in range(PARSE_READS):
            data = self.read_bytes(rel, limit=limit)
            try:
                return parse(data)
            except (ValueError, KeyError, TypeError) as e:
                error = e
                if data == previous:
                    break
                previous = data
        assert error is not None
        raise error

    def read_json(self, rel: str) -> Any:
        return self.read_parsed(rel, json.loads)

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write a whole file atomically; returns its URI."""
        if self.is_local:
            atomic_write_bytes(Path(self.path(rel)), data)
        else:
            self._put(self.path(rel), lambda out: out.write(data))
        return self.uri_of(rel)

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, obj: Any) -> str:
        """Same bytes as `xtra.fileio.atomic_write_json`."""
        return self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def put_file(self, local: str | os.PathLike[str], rel: str) -> FileRecord:
        """Copy a local file to `rel` atomically (streamed); returns its size and sha256."""
        with open(local, "rb") as src:
            st = os.fstat(src.fileno())
            digest = hashlib.sha256()

            def copy(out: Any) -> None:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)

            if self.is_local:
                with atomic_path(Path(self.path(rel))) as tmp, open(tmp, "wb") as out:
                    copy(out)
            else:
                self._put(self.path(rel), copy)
        return FileRecord(key=clean_key(rel), size=st.st_size, sha256=digest.hexdigest(), mtime_ns=st.st_mtime_ns)

    def get_file(self, rel: str, local: str | os.PathLike[str], *, mtime_ns: int | None = None,
                 expect: FileRecord | None = None, limit: int | None = None) -> int:
        """Copy `rel` to a local file atomically (streamed); returns the bytes copied.

        `expect` checks size and sha256 against a committed record; `mtime_ns` stamps the local copy."""
        digest, n = hashlib.sha256(), 0
        local = Path(local)
        try:
            with self.fs.open_input_stream(self.path(rel)) as src, atomic_path(local) as tmp:
                with open(tmp, "wb") as out:
                    while chunk := src.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        n += len(chunk)
                        if expect is not None and n > expect.size:
                            break  # longer than its record: stop here, the check below refuses it
                        if limit is not None and n > limit:
                            raise StorageError(f"{self.uri_of(rel)}: refused: longer than the {limit} bytes "
                                               "listed (the object grew while it was read)")
                if expect is not None and (n != expect.size or digest.hexdigest() != expect.sha256):
                    raise StorageError(f"{self.uri_of(rel)}: content does not match its manifest record "
                                       f"({n} bytes, expected {expect.size}); the object was changed in place")
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri_of(rel)}: no such file") from None
        except OSError as e:
            raise self._error(rel, "read", e) from None
        if mtime_ns is not None:
            os.utime(local, ns=(mtime_ns, mtime_ns))
        return n

    def list(self, rel: str = "") -> list[Entry]:
        """Every file below `rel` (recursive), paths relative to `rel`, sorted. Empty if `rel` is absent."""
        root = self.path(rel).rstrip("/")
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        except OSError as e:
            raise self._error(rel, "list", e) from None
        out = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            sub = info.path[len(root):].lstrip("/")
            out.append(Entry(path=sub, size=info.size, mtime_ns=info.mtime_ns))
        return sorted(out, key=lambda e: e.path)

    def delete(self, rel: str) -> None:
        """Remove a file or a whole directory tree; nothing if absent."""
        info = self._info(rel)
        try:
            if info.type == pafs.FileType.Directory and self.kind in ("s3", "gcs") and "/" not in self.path(rel):
                self.fs.delete_dir_contents(self.path(rel))  # a bucket: empty it, never remove it
            elif info.type == pafs.FileType.Directory:
                self.fs.delete_dir(self.path(rel))
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self._error(rel, "delete", e) from None


    # ---- internals -----------------------------------------------------------------------------
    def _info(self, rel: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path(rel))
        except OSError as e:
            raise self._error(rel, "stat", e) from None

    def _put(self, fs_path: str, write: Callable[[Any], None]) -> None:
        try:
            if self.kind in ("s3", "gcs"):
                with self.fs.open_output_stream(fs_path) as out:  # one object, visible when closed
                    write(out)
            else:  # a filesystem behind fsspec: temp name, then a move
                parent = fs_path.rsplit("/", 1)[0]
                tmp = f"{parent}/.{fs_path.rsplit('/', 1)[-1]}.{secrets.token_hex(4)}.tmp"
                self.fs.create_dir(parent, recursive=True)
                try:
                    with self.fs.open_output_stream(tmp) as out:
                        write(out)
                    self.fs.move(tmp, fs_path)
                except BaseException:
                    if self.fs.get_file_info(tmp).type == pafs.FileType.File:
                        self.fs.delete_file(tmp)
                    raise
        except OSError as e:
            rel = fs_path[len(self.base):].lstrip("/")
            raise self._error(rel, "write", e) from None


    def _error(self, rel: str, op: str, e: BaseException) -> StorageError:
        return StorageError(f"{self.uri_of(rel)}: cannot {op}: {explain_error(e)}")

