"""A study's storage: a local path, a shared filesystem, or an object store (s3://, gs://) through pyarrow.

Storage is the source of truth for a study; a local study directory is a cache rebuilt from it.

Plain files (`write_bytes`, `read_bytes`, ...) are written atomically: on a local or shared
filesystem through a temp file and a rename (`xtra.fileio`), on an object store by one PUT (S3 and
GCS make an object visible whole or not at all; a multipart upload appears at its completion).

Directories (`upload_dir`, `download_dir`) are committed, so a reader never sees a half-uploaded
checkpoint as complete. The rule:
- a directory `D` in storage is `D/_manifest.json` plus immutable objects `D/_gen/<generation>/<name>`;
- an upload writes every changed file under a NEW generation first, then the manifest LAST (one
  atomic write: the commit point), then deletes older generations the manifest no longer uses;
- a reader reads the manifest first and fetches only the objects it names. No manifest = the
  directory is absent (an upload interrupted before its commit leaves the previous commit, or
  nothing, never a mix of two uploads).
Unchanged files (same size and mtime as the committed record) are not uploaded again, and a
download skips local files whose size and mtime already match the manifest.

A directory may also hold plain files beside its commits, each written whole by `write_bytes`
(e.g. the driver recording that a trial failed or was stopped). Readers (`download_dir`,
`read_member`, `pull`) see both; if a name exists both ways the committed one wins, so a name
must have one writer: commit it (the trial's own process, through `upload_dir`, leaving other
names out with `include=`) or write it plain, never both. One process commits a given directory
at a time (Ray runs one live attempt per trial); `_gen` is a reserved name.

When the storage is a local path and a trial writes in place (`is_directory_itself`), uploads
and downloads are no-ops: the same calls serve a single machine and a cluster.

Credentials and endpoint come from the usual environment: `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, `AWS_PROFILE` and `~/.aws/*`, instance or pod roles;
`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` for an S3-compatible store (MinIO, Ceph, moto);
`AWS_REGION` / `AWS_DEFAULT_REGION`. GCS uses Google's default credentials. A `Storage` pickles as
its URI, so each process (a Ray worker on another node) resolves credentials from its own
environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from xtra.fileio import atomic_path, atomic_write_bytes

MANIFEST = "_manifest.json"
GENERATIONS = "_gen"
MANIFEST_FORMAT = "xtra-dir/1"
SCHEMES = ("local path", "file://", "s3://", "gs://")
_CHUNK = 8 << 20
REQUEST_TIMEOUT_S = 120.0  # object stores: the longest wait for the next byte of one request
_THREADS = 8
# Temp files of an in-flight `xtra.fileio` atomic write (".name.XXXX.tmp"): never part of a commit.
_TMP_RE = re.compile(r"^\..+\.tmp$")


class StorageError(RuntimeError):
    """One line naming the URI and what failed."""


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


@dataclass(frozen=True)
class Storage:
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
        text = os.fspath(uri).strip()
        if not text:
            raise StorageError("storage URI is empty (allowed: " + ", ".join(SCHEMES) + ")")
        if "://" not in text:
            path = Path(text).expanduser().resolve()
            return cls(uri=str(path), fs=pafs.LocalFileSystem(), base=str(path), kind="local")
        parsed = urlparse(text)
        scheme = parsed.scheme.lower()
        if scheme == "file":
            path = Path(parsed.path or "/").expanduser().resolve()
            return cls(uri=str(path), fs=pafs.LocalFileSystem(), base=str(path), kind="local")
        bucket, prefix = parsed.netloc, parsed.path.strip("/")
        if scheme in ("s3", "s3a", "gs", "gcs") and not bucket:
            raise StorageError(f"{text}: no bucket name (expected {scheme}://BUCKET/PREFIX)")
        base = f"{bucket}/{prefix}" if prefix else bucket
        norm = f"{scheme}://{base}"
        if scheme in ("s3", "s3a"):
            return cls(uri=f"s3://{base}", fs=_s3_filesystem(bucket, connect_timeout, attempts), base=base,
                       kind="s3")
        if scheme in ("gs", "gcs"):
            kw: dict[str, Any] = {}
            if connect_timeout is not None:
                kw["retry_time_limit"] = _timedelta(connect_timeout)
            return cls(uri=f"gs://{base}", fs=pafs.GcsFileSystem(**kw), base=base, kind="gcs")
        try:
            import fsspec
            fs = fsspec.filesystem(scheme)
        except (ImportError, ValueError) as e:
            raise StorageError(f"{text}: unsupported scheme {scheme!r} (allowed: {', '.join(SCHEMES)}, "
                               f"or a scheme an installed fsspec package provides): {_one_line(e)}") from None
        return cls(uri=norm, fs=pafs.PyFileSystem(pafs.FSSpecHandler(fs)), base=base, kind="fsspec")

    def __reduce__(self) -> tuple[Any, ...]:
        # Each process resolves its own credentials and endpoint from its environment.
        return (Storage.from_uri, (self.uri,))

    # ---- paths ---------------------------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        """The path on `self.fs` of `rel`."""
        rel = _clean(rel)
        return f"{self.base.rstrip('/')}/{rel}" if rel else self.base

    def uri_of(self, rel: str = "") -> str:
        rel = _clean(rel)
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
        return self.is_local and _same_dir(Path(local_dir), Path(self.path(rel)))

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

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of a file; FileNotFoundError (naming the URI) if it is not there."""
        try:
            with self.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri_of(rel)}: no such file") from None
        except OSError as e:
            raise self._error(rel, "read", e) from None

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

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
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)

            if self.is_local:
                with atomic_path(Path(self.path(rel))) as tmp, open(tmp, "wb") as out:
                    copy(out)
            else:
                self._put(self.path(rel), copy)
        return FileRecord(key=_clean(rel), size=st.st_size, sha256=digest.hexdigest(), mtime_ns=st.st_mtime_ns)

    def get_file(self, rel: str, local: str | os.PathLike[str], *, mtime_ns: int | None = None,
                 expect: FileRecord | None = None) -> int:
        """Copy `rel` to a local file atomically (streamed); returns the bytes copied.

        `expect` checks size and sha256 against a committed record; `mtime_ns` stamps the local copy."""
        digest, n = hashlib.sha256(), 0
        local = Path(local)
        try:
            with self.fs.open_input_stream(self.path(rel)) as src, atomic_path(local) as tmp:
                with open(tmp, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        n += len(chunk)
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

    # ---- committed directories -----------------------------------------------------------------
    def manifest(self, rel: str) -> Manifest | None:
        """The committed manifest of directory `rel`, or None (never committed = absent)."""
        try:
            data = self.read_bytes(f"{_clean(rel)}/{MANIFEST}" if _clean(rel) else MANIFEST)
        except FileNotFoundError:
            return None
        try:
            return Manifest.from_json(data)
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{self.uri_of(rel)}/{MANIFEST}: unreadable manifest: {_one_line(e)}") from None

    def committed_dirs(self, rel: str = "") -> list[str]:
        """Names of the immediate subdirectories of `rel` that hold a committed directory (sorted)."""
        return sorted({e.path.split("/")[0] for e in self.list(rel)
                       if e.path.count("/") == 1 and e.path.endswith("/" + MANIFEST)})

    def subdirs(self, rel: str = "") -> list[str]:
        """Names of the immediate subdirectories of `rel` with anything a reader can see: a commit or
        a plain file (a generation without a commit does not count)."""
        return sorted({e.path.split("/")[0] for e in self.list(rel) if "/" in e.path and not _in_generations(e.path)})

    def read_member(self, rel: str, name: str) -> bytes:
        """One file of directory `rel`: as of its last commit, else a plain file of that name."""
        for _ in range(3):
            m = self.manifest(rel)
            if m is None or name not in m.files:
                try:
                    return self.read_bytes(_join(rel, name))
                except FileNotFoundError:
                    raise FileNotFoundError(f"{self.uri_of(rel)}: no file {name!r} (committed or plain)") from None
            try:
                return self.read_bytes(_join(rel, m.files[name].key))
            except FileNotFoundError:
                continue  # a newer commit removed the generation we read from; read its manifest
        raise StorageError(f"{self.uri_of(rel)}: {name!r} kept changing under the reader (3 commits in a row)")

    def plain_files(self, rel: str) -> dict[str, Entry]:
        """Files of directory `rel` written one by one (`write_bytes`), outside its commits."""
        return {e.path: e for e in self.list(rel) if e.path != MANIFEST and not _in_generations(e.path)}

    def upload_dir(self, local_dir: str | os.PathLike[str], rel: str, *,
                   include: Callable[[str], bool] | None = None,
                   progress: Callable[[str, int], None] | None = None) -> SyncResult:
        """Commit the files of `local_dir` (recursively) as directory `rel`: changed files to a new
        generation, then the manifest, then old generations are deleted. Returns what was sent.
        `include(name)` leaves names out of the commit (e.g. files another process writes plain);
        `progress(name, bytes)` is called after each file has landed (for logs)."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise StorageError(f"{local_dir}: not a directory (uploading to {self.uri_of(rel)})")
        if self.is_directory_itself(local_dir, rel):  # the files are already where storage keeps them
            return SyncResult(transferred=(), unchanged=tuple(_local_files(local_dir)))
        prev = self.manifest(rel)
        seq = (prev.seq if prev else 0) + 1
        gen = f"{seq:06d}-{secrets.token_hex(4)}"
        names = [n for n in _local_files(local_dir) if include is None or include(n)]
        records: dict[str, FileRecord] = {}
        todo: list[str] = []
        for name in names:
            st = (local_dir / name).stat()
            old = prev.files.get(name) if prev else None
            if old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
                records[name] = old
            else:
                todo.append(name)

        def send(name: str) -> tuple[str, FileRecord]:
            key = f"{GENERATIONS}/{gen}/{name}"
            rec = self.put_file(local_dir / name, _join(rel, key))
            if progress is not None:
                progress(name, rec.size)
            return name, dataclasses.replace(rec, key=key)

        with ThreadPoolExecutor(min(_THREADS, max(1, len(todo)))) as pool:
            records.update(pool.map(send, todo))
        manifest = Manifest(generation=gen, files=records, written=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.write_bytes(_join(rel, MANIFEST), manifest.to_json())  # the commit point
        self._collect_garbage(rel, manifest)
        return SyncResult(transferred=tuple(sorted(todo)), unchanged=tuple(sorted(set(records) - set(todo))),
                          bytes=sum(records[n].size for n in todo))

    def download_dir(self, rel: str, local_dir: str | os.PathLike[str], *, checksum: bool = False, prune: bool = True,
                     include: Callable[[str], bool] | None = None) -> SyncResult | None:
        """Make `local_dir` equal to directory `rel`: its last commit plus its plain files (a committed
        name wins over a plain one). None when there is neither (an upload that died before its first
        commit leaves nothing a reader sees).

        Files whose size and mtime (or, with `checksum`, sha256 for committed files) match are
        skipped; `include` picks names (e.g. leave out checkpoints); `prune` deletes local files that
        storage does not have."""
        local_dir = Path(local_dir)
        if self.is_directory_itself(local_dir, rel):
            names = tuple(_local_files(local_dir)) if local_dir.is_dir() else ()
            return SyncResult(transferred=(), unchanged=names) if names else None
        for _ in range(3):
            m = self.manifest(rel)
            plain = self.plain_files(rel)
            if m is None and not plain:
                return None
            files = m.files if m else {}
            plain = {n: e for n, e in plain.items() if n not in files}
            keep = set(files) | set(plain)
            todo = [n for n, r in files.items() if (include is None or include(n))
                    and not _matches(local_dir / n, r, checksum)]
            todo_plain = [n for n, e in plain.items() if (include is None or include(n))
                          and not _same_stat(local_dir / n, e)]
            wanted = {n for n in keep if include is None or include(n)}

            def fetch(name: str, files: dict[str, FileRecord] = files, plain: dict[str, Entry] = plain) -> int:
                if name in files:
                    rec = files[name]
                    return self.get_file(_join(rel, rec.key), local_dir / name, mtime_ns=rec.mtime_ns, expect=rec)
                return self.get_file(_join(rel, name), local_dir / name, mtime_ns=plain[name].mtime_ns)

            try:
                with ThreadPoolExecutor(min(_THREADS, max(1, len(todo) + len(todo_plain)))) as pool:
                    nbytes = sum(pool.map(fetch, todo + todo_plain))
            except FileNotFoundError:
                continue  # a newer commit replaced the generation mid-download: start over from its manifest
            removed: list[str] = []
            if prune and local_dir.is_dir():
                for name in _local_files(local_dir):
                    if name not in keep:
                        (local_dir / name).unlink()
                        removed.append(name)
            done = sorted(todo + todo_plain)
            return SyncResult(transferred=tuple(done), unchanged=tuple(sorted(wanted - set(done))),
                              removed=tuple(removed), bytes=nbytes)
        raise StorageError(f"{self.uri_of(rel)}: kept changing under the reader (3 commits in a row)")

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

    def _collect_garbage(self, rel: str, manifest: Manifest) -> None:
        """Delete generations older than `manifest` that it does not reference. Newer ones (an
        upload still in flight from another writer) are left alone."""
        used = {r.key.split("/")[1] for r in manifest.files.values()} | {manifest.generation}
        root = self.path(_join(rel, GENERATIONS))
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(root, recursive=False, allow_not_found=True))
        except OSError:
            return
        for info in infos:
            gen = info.path.rstrip("/").rsplit("/", 1)[-1]
            seq = gen.split("-", 1)[0]
            if gen in used or not seq.isdigit() or int(seq) >= manifest.seq:
                continue
            try:
                if info.type == pafs.FileType.Directory:
                    self.fs.delete_dir(info.path)
                else:
                    self.fs.delete_file(info.path)
            except OSError:
                pass  # garbage left behind costs space, never correctness

    def _error(self, rel: str, op: str, e: BaseException) -> StorageError:
        return StorageError(f"{self.uri_of(rel)}: cannot {op}: {_explain(e)}")


# ---- check, pull, measure ---------------------------------------------------------------------
def check(uri: str | os.PathLike[str], *, write: bool = True) -> Storage:
    """Fail fast, before any trial starts: StorageError with ONE line naming the URI and what failed
    (no such bucket, endpoint unreachable, no/bad credentials, permission denied). With `write`,
    also writes, reads back and deletes a small probe object. Returns the usable Storage."""
    text = os.fspath(uri)
    probe = Storage.from_uri(text, connect_timeout=5.0, attempts=2)
    if probe.is_local:
        _check_local(probe, write)
        return Storage.from_uri(text)
    bucket = probe.base.split("/", 1)[0]
    try:
        # A listing answers with a specific error code (HEAD requests carry no body).
        listed = probe.fs.get_file_info(pafs.FileSelector(probe.base, recursive=False, allow_not_found=True))
    except OSError as e:
        raise StorageError(f"{probe.uri}: {_diagnose(e, probe.kind, bucket, 'list')}") from None
    if not listed:  # S3 answers NoSuchBucket to the listing already; other stores may list nothing
        try:
            missing = probe.fs.get_file_info(bucket).type == pafs.FileType.NotFound
        except OSError:
            missing = False  # HeadBucket may need a permission the listing did not; the write probe decides
        if missing:
            raise StorageError(f"{probe.uri}: bucket '{bucket}' does not exist")
    if write:
        key = f".xtra-check-{secrets.token_hex(6)}"
        for op, act in (("write", lambda: probe.fs.open_output_stream(probe.path(key)).close()),
                        ("read", lambda: probe.fs.open_input_stream(probe.path(key)).read()),
                        ("delete", lambda: probe.fs.delete_file(probe.path(key)))):
            try:
                act()
            except OSError as e:
                raise StorageError(f"{probe.uri}: {_diagnose(e, probe.kind, bucket, op)}") from None
    return Storage.from_uri(text)


def pull(uri: str | os.PathLike[str], local_dir: str | os.PathLike[str], *,
         include: Callable[[str], bool] | None = None) -> SyncResult:
    """Make `local_dir` a local copy of everything at `uri` (the `xtra study pull URI DIR` command):
    committed directories through their manifests (uncommitted uploads are left out), other files
    as they are. Only what changed (size and mtime) is transferred; local extras outside committed
    directories are kept. `include(path)` (relative to `uri`) picks files, e.g. no checkpoints for
    `status`; a copy refreshed this way is the driver's cache of the study."""
    st = Storage.from_uri(uri)
    local_dir = Path(local_dir)
    if st.is_local and _same_dir(local_dir, Path(st.base)):
        raise StorageError(f"{local_dir}: is the storage directory {st.uri} itself (pull into another directory)")
    entries = st.list()
    if not entries:
        raise StorageError(f"{st.uri}: nothing there to pull (check the URI)")
    dirs = sorted({e.path[: -len(MANIFEST)].rstrip("/") for e in entries
                   if e.path == MANIFEST or e.path.endswith("/" + MANIFEST)})
    inside = tuple(d + "/" for d in dirs if d)
    transferred: list[str] = []
    unchanged: list[str] = []
    removed: list[str] = []
    nbytes = 0
    for d in dirs:
        pick = None if include is None else (lambda n, d=d: include(_join(d, n)))
        res = st.download_dir(d, local_dir / d, include=pick)
        if res is None:  # deleted since the listing
            continue
        transferred += [_join(d, n) for n in res.transferred]
        unchanged += [_join(d, n) for n in res.unchanged]
        removed += [_join(d, n) for n in res.removed]
        nbytes += res.bytes
    root_is_dir = "" in dirs

    def plain(e: Entry) -> bool:
        # Not in a committed directory (download_dir brought those, plain files included), and not a
        # generation's objects (they reach a reader only through a manifest).
        return (not root_is_dir and not e.path.startswith(inside) and not _in_generations(e.path)
                and (include is None or include(e.path)))

    todo = []
    for e in filter(plain, entries):
        if _same_stat(local_dir / e.path, e):
            unchanged.append(e.path)
        else:
            todo.append(e)
    with ThreadPoolExecutor(min(_THREADS, max(1, len(todo)))) as pool:
        nbytes += sum(pool.map(lambda e: st.get_file(e.path, local_dir / e.path, mtime_ns=e.mtime_ns), todo))
    transferred += [e.path for e in todo]
    return SyncResult(transferred=tuple(sorted(transferred)), unchanged=tuple(sorted(unchanged)),
                      removed=tuple(sorted(removed)), bytes=nbytes)


def measure_upload(storage: Storage, trial_dir: str | os.PathLike[str], *, trial_wall_s: float,
                   checkpoint: str = "checkpoint.pt", repeats: int = 3, rel: str | None = None) -> dict[str, Any]:
    """Upload overhead of a trial directory, for `xtra bench --sections orchestration`.

    Measures (median of `repeats`): one PUT of the checkpoint file; a first commit of the whole
    trial directory; a re-commit after the checkpoint changed (what every later checkpoint costs).
    Returns seconds and ratios to `trial_wall_s`. Works on a copy; cleans up what it wrote."""
    if not trial_wall_s > 0:
        raise ValueError(f"trial_wall_s={trial_wall_s!r}: must be > 0")
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r}: must be >= 1")
    trial_dir = Path(trial_dir)
    if not (trial_dir / checkpoint).is_file():
        raise StorageError(f"{trial_dir}: no {checkpoint} to measure (run a trial that checkpoints first)")
    rel = rel or f"bench/upload-{secrets.token_hex(4)}"
    ckpt_s, full_s, incr_s = [], [], []
    with tempfile.TemporaryDirectory(prefix="xtra-upload-bench-") as tmp:
        work = Path(tmp) / "trial"
        shutil.copytree(trial_dir, work)
        files = _local_files(work)
        total = sum((work / n).stat().st_size for n in files)
        ck_size = (work / checkpoint).stat().st_size
        try:
            for i in range(repeats):
                t = time.perf_counter()
                storage.put_file(work / checkpoint, f"{rel}/put/{checkpoint}")
                ckpt_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                storage.upload_dir(work, f"{rel}/dir{i}")
                full_s.append(time.perf_counter() - t)
                _touch(work / checkpoint)
                t = time.perf_counter()
                storage.upload_dir(work, f"{rel}/dir{i}")
                incr_s.append(time.perf_counter() - t)
        finally:
            storage.delete(rel)

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    out = {"storage": storage.kind, "checkpoint_bytes": ck_size, "trial_dir_bytes": total,
           "trial_dir_files": len(files), "checkpoint_put_s": med(ckpt_s), "trial_dir_upload_s": med(full_s),
           "checkpoint_commit_s": med(incr_s), "trial_wall_s": trial_wall_s, "repeats": repeats}
    out["checkpoint_put_ratio"] = out["checkpoint_put_s"] / trial_wall_s
    out["checkpoint_commit_ratio"] = out["checkpoint_commit_s"] / trial_wall_s
    out["trial_dir_upload_ratio"] = out["trial_dir_upload_s"] / trial_wall_s
    return out


def measure_upload_local_s3(trial_dir: str | os.PathLike[str], *, trial_wall_s: float,
                            repeats: int = 3) -> dict[str, Any]:
    """`measure_upload` against a fresh moto S3 server on 127.0.0.1 (needs the dev extra)."""
    from xtra.s3server import LocalS3Server

    with LocalS3Server() as server:
        saved = {k: os.environ.get(k) for k in server.env}
        os.environ.update(server.env)
        try:
            server.create_bucket("bench")
            return measure_upload(Storage.from_uri("s3://bench/xtra"), trial_dir, trial_wall_s=trial_wall_s,
                                  repeats=repeats)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# ---- helpers ----------------------------------------------------------------------------------
def _s3_filesystem(bucket: str, connect_timeout: float | None, attempts: int | None) -> pafs.S3FileSystem:
    kw: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        u = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kw["endpoint_override"] = u.netloc + u.path.rstrip("/")
        kw["scheme"] = u.scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and not endpoint:
        try:  # the bucket's own region, as pyarrow's from_uri does (asks AWS; no credentials needed)
            region = pafs.resolve_s3_region(bucket)
        except OSError:
            region = None  # let the SDK decide; the first real request reports what is wrong
    if region:
        kw["region"] = region
    elif endpoint:
        kw["region"] = "us-east-1"  # S3-compatible stores accept any region in the signature
    # The SDK's default request timeout (3 s without a byte) fails large uploads whenever the store
    # is slow to finish one (completing a multipart upload of a 1 GB checkpoint, a loaded MinIO
    # or moto): wait longer for a byte, and let a connection attempt fail fast.
    kw["request_timeout"] = REQUEST_TIMEOUT_S
    if connect_timeout is not None:
        kw["connect_timeout"] = connect_timeout
    if attempts is not None:
        kw["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=attempts)
    return pafs.S3FileSystem(**kw)


def _timedelta(seconds: float) -> Any:
    import datetime

    return datetime.timedelta(seconds=seconds)


def _check_local(st: Storage, write: bool) -> None:
    path = Path(st.base)
    if path.exists() and not path.is_dir():
        raise StorageError(f"{st.uri}: is a file, not a directory")
    if not write:
        if not path.is_dir():
            raise StorageError(f"{st.uri}: no such directory")
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".xtra-check-{secrets.token_hex(6)}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise StorageError(f"{st.uri}: cannot write: {e.strerror or _one_line(e)}") from None


def _credential_sources() -> list[str]:
    """Where the AWS SDK could find credentials, as far as the environment shows (an instance
    role is invisible from here)."""
    env = os.environ
    found = []
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        found.append("AWS_ACCESS_KEY_ID")
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        if env.get(var):
            found.append(var)
    for var, default in (("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), ("AWS_CONFIG_FILE", "~/.aws/config")):
        p = Path(env.get(var) or default).expanduser()
        try:
            if p.is_file() and p.stat().st_size > 0:
                found.append(str(p))
        except OSError:
            pass
    return found


_AWS_CODE = re.compile(r"AWS Error (\w+)(?: \(HTTP status (\d+)\))? during (\w+) operation")


def _diagnose(e: BaseException, kind: str, bucket: str, op: str) -> str:
    """Turn a pyarrow/AWS error into what failed, in words a user can act on."""
    msg = str(e)
    m = _AWS_CODE.search(msg)
    code, operation = (m.group(1), m.group(3)) if m else ("", "")
    endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")) if kind == "s3" else None
    where = f"endpoint {endpoint}" if endpoint else f"the {kind.upper()} service"
    if code in ("NETWORK_CONNECTION", "REQUEST_TIME_TOO_SKEWED") or "Could not connect" in msg or "resolve host" in msg:
        return f"cannot reach {where} ({_one_line(msg.split('Details:')[-1])})"
    if code in ("NO_SUCH_BUCKET", "RESOURCE_NOT_FOUND") or "NoSuchBucket" in msg:
        return f"bucket '{bucket}' does not exist"
    if code == "INVALID_ACCESS_KEY_ID" or "InvalidAccessKeyId" in msg:
        return "the access key id is not known to the store (check AWS_ACCESS_KEY_ID or the profile)"
    if code == "SIGNATURE_DOES_NOT_MATCH" or "SignatureDoesNotMatch" in msg:
        return "the secret key does not match the access key id (check AWS_SECRET_ACCESS_KEY or the profile)"
    if code in ("INVALID_CLIENT_TOKEN_ID", "EXPIRED_TOKEN", "EXPIRED_TOKEN_EXCEPTION") or "ExpiredToken" in msg:
        return (f"the credentials were refused ({code.lower() or 'invalid token'}; "
                "check AWS_SESSION_TOKEN or the profile)")
    if kind == "s3" and not _credential_sources():
        return ("no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run "
                f"with an instance role) and the anonymous {operation or op} request was refused "
                f"({code or _one_line(msg)})")
    if code == "ACCESS_DENIED" or "AccessDenied" in msg or "403" in msg:
        action = {"list": "s3:ListBucket", "write": "s3:PutObject", "read": "s3:GetObject",
                  "delete": "s3:DeleteObject"}.get(op, op)
        return f"permission denied to {op} ({operation or op}; the credentials need {action} on this prefix)"
    return f"cannot {op}: {_explain(e)}"


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


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _touch(path: Path) -> None:
    """A new mtime (as a rewritten checkpoint would have), content unchanged."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

