"""Committed directories (see `xtra.storage`): a manifest as the commit point, immutable generations,
upload and download of only what changed. A mixin of `Storage`, which provides the plain-file calls."""

from __future__ import annotations

import dataclasses
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.fs as pafs

from xtra.storage.manifest import (
    GENERATIONS,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    Entry,
    FileRecord,
    Manifest,
    SyncResult,
    in_generations,
    matches_manifest,
    same_stat,
)
from xtra.storage.names import (
    PLAIN_GROWTH,
    THREADS,
    StorageError,
    check_name,
    check_size,
    join_key,
    local_files,
    local_target,
    one_line,
)


class CommittedDirs:
    """Directories committed through a manifest (methods of `Storage`)."""

    def manifest(self, rel: str) -> Manifest | None:
        """The committed manifest of directory `rel`, or None (never committed = absent); one replaced
        while it is read is read again (`read_parsed`)."""
        where = self.uri_of(join_key(rel, MANIFEST))
        try:
            return self.read_parsed(join_key(rel, MANIFEST), lambda data: Manifest.from_json(data, where=where),
                                    limit=MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{self.uri_of(rel)}/{MANIFEST}: unreadable manifest: {one_line(e)}") from None

    def committed_dirs(self, rel: str = "") -> list[str]:
        """Names of the immediate subdirectories of `rel` that hold a committed directory (sorted)."""
        return sorted({e.path.split("/")[0] for e in self.list(rel)
                       if e.path.count("/") == 1 and e.path.endswith("/" + MANIFEST)})

    def subdirs(self, rel: str = "") -> list[str]:
        """Names of the immediate subdirectories of `rel` with anything a reader can see: a commit or
        a plain file (a generation without a commit does not count)."""
        return sorted({e.path.split("/")[0] for e in self.list(rel) if "/" in e.path and not in_generations(e.path)})

    def read_member(self, rel: str, name: str) -> bytes:
        """One file of directory `rel`: as of its last commit, else a plain file of that name."""
        for _ in range(3):
            m = self.manifest(rel)
            if m is None or name not in m.files:
                try:
                    return self.read_bytes(join_key(rel, name))
                except FileNotFoundError:
                    raise FileNotFoundError(f"{self.uri_of(rel)}: no file {name!r} (committed or plain)") from None
            try:
                return self.read_bytes(join_key(rel, m.files[name].key))
            except FileNotFoundError:
                continue  # a newer commit removed the generation we read from; read its manifest
        raise StorageError(f"{self.uri_of(rel)}: {name!r} kept changing under the reader (3 commits in a row)")

    def plain_files(self, rel: str) -> dict[str, Entry]:
        """Files of directory `rel` written one by one (`write_bytes`), outside its commits. Their names
        and sizes come from the store's listing and are checked like a manifest's (StorageError)."""
        where = self.uri_of(rel)
        out = {}
        for e in self.list(rel):
            if e.path != MANIFEST and not in_generations(e.path):
                check_name(e.path, where)
                check_size(e.size, where, e.path)
                out[e.path] = e
        return out

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
            return SyncResult(transferred=(), unchanged=tuple(local_files(local_dir)))
        prev = self.manifest(rel)
        seq = (prev.seq if prev else 0) + 1
        gen = f"{seq:06d}-{secrets.token_hex(4)}"
        names = [n for n in local_files(local_dir) if include is None or include(n)]
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
            rec = self.put_file(local_dir / name, join_key(rel, key))
            if progress is not None:
                progress(name, rec.size)
            return name, dataclasses.replace(rec, key=key)

        with ThreadPoolExecutor(min(THREADS, max(1, len(todo)))) as pool:
            records.update(pool.map(send, todo))
        manifest = Manifest(generation=gen, files=records, written=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.write_bytes(join_key(rel, MANIFEST), manifest.to_json())  # the commit point
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
            names = tuple(local_files(local_dir)) if local_dir.is_dir() else ()
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
                    and not matches_manifest(local_dir / n, r, checksum)]
            todo_plain = [n for n, e in plain.items() if (include is None or include(n))
                          and not same_stat(local_dir / n, e)]
            wanted = {n for n in keep if include is None or include(n)}
            # Every name was checked when read (manifest, listing); before the first byte is written,
            # no target may pass through a link or leave local_dir.
            where = self.uri_of(rel)
            target = {n: local_target(local_dir, n, where) for n in todo + todo_plain}

            def fetch(name: str, files: dict[str, FileRecord] = files, plain: dict[str, Entry] = plain,
                      target: dict[str, Path] = target) -> int:
                if name in files:
                    rec = files[name]
                    return self.get_file(join_key(rel, rec.key), target[name], mtime_ns=rec.mtime_ns, expect=rec)
                return self.get_file(join_key(rel, name), target[name], mtime_ns=plain[name].mtime_ns,
                                     limit=plain[name].size + PLAIN_GROWTH)

            try:
                with ThreadPoolExecutor(min(THREADS, max(1, len(todo) + len(todo_plain)))) as pool:
                    nbytes = sum(pool.map(fetch, todo + todo_plain))
            except FileNotFoundError:
                continue  # a newer commit replaced the generation mid-download: start over from its manifest
            removed: list[str] = []
            if prune and local_dir.is_dir():
                for name in local_files(local_dir):
                    if name not in keep:
                        (local_dir / name).unlink()
                        removed.append(name)
            done = sorted(todo + todo_plain)
            return SyncResult(transferred=tuple(done), unchanged=tuple(sorted(wanted - set(done))),
                              removed=tuple(removed), bytes=nbytes)
        raise StorageError(f"{self.uri_of(rel)}: kept changing under the reader (3 commits in a row)")

    def _collect_garbage(self, rel: str, manifest: Manifest) -> None:
        """Delete generations older than `manifest` that it does not reference. Newer ones (an
        upload still in flight from another writer) are left alone."""
        used = {r.key.split("/")[1] for r in manifest.files.values()} | {manifest.generation}
        root = self.path(join_key(rel, GENERATIONS))
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

