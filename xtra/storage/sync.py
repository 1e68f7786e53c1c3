"""`pull`: make a local directory a copy of everything at a URI (committed directories through
their manifests, plain files as they are), transferring only what changed."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from xtra.storage.manifest import MANIFEST, Entry, SyncResult, in_generations, same_stat
from xtra.storage.names import (
    PLAIN_GROWTH,
    THREADS,
    StorageError,
    check_name,
    check_size,
    join_key,
    local_target,
    same_dir,
)
from xtra.storage.store import Storage


def pull(uri: str | os.PathLike[str], local_dir: str | os.PathLike[str], *,
         include: Callable[[str], bool] | None = None) -> SyncResult:
    """Make `local_dir` a local copy of everything at `uri` (the `xtra study pull URI DIR` command):
    committed directories through their manifests (uncommitted uploads are left out), other files
    as they are. Only what changed (size and mtime) is transferred; local extras outside committed
    directories are kept. `include(path)` (relative to `uri`) picks files, e.g. no checkpoints for
    `status`; a copy refreshed this way is the driver's cache of the study."""
    st = Storage.from_uri(uri)
    local_dir = Path(local_dir)
    if st.is_local and same_dir(local_dir, Path(st.base)):
        raise StorageError(f"{local_dir}: is the storage directory {st.uri} itself (pull into another directory)")
    entries = st.list()
    if not entries:
        raise StorageError(f"{st.uri}: nothing there to pull (check the URI)")
    for e in entries:  # names from the store: checked before anything is written
        check_name(e.path, st.uri)
        check_size(e.size, st.uri, e.path)
    dirs = sorted({e.path[: -len(MANIFEST)].rstrip("/") for e in entries
                   if e.path == MANIFEST or e.path.endswith("/" + MANIFEST)})
    inside = tuple(d + "/" for d in dirs if d)
    transferred: list[str] = []
    unchanged: list[str] = []
    removed: list[str] = []
    nbytes = 0
    for d in dirs:
        pick = None if include is None else (lambda n, d=d: include(join_key(d, n)))
        res = st.download_dir(d, local_target(local_dir, d, st.uri) if d else local_dir, include=pick)
        if res is None:  # deleted since the listing
            continue
        transferred += [join_key(d, n) for n in res.transferred]
        unchanged += [join_key(d, n) for n in res.unchanged]
        removed += [join_key(d, n) for n in res.removed]
        nbytes += res.bytes
    root_is_dir = "" in dirs

    def plain(e: Entry) -> bool:
        # Not in a committed directory (download_dir brought those, plain files included), and not a
        # generation's objects (they reach a reader only through a manifest).
        return (not root_is_dir and not e.path.startswith(inside) and not in_generations(e.path)
                and (include is None or include(e.path)))

    todo = []
    for e in filter(plain, entries):
        if same_stat(local_dir / e.path, e):
            unchanged.append(e.path)
        else:
            todo.append(e)
    target = {e.path: local_target(local_dir, e.path, st.uri) for e in todo}
    with ThreadPoolExecutor(min(THREADS, max(1, len(todo)))) as pool:
        nbytes += sum(pool.map(lambda e: st.get_file(e.path, target[e.path], mtime_ns=e.mtime_ns,
                                                     limit=e.size + PLAIN_GROWTH), todo))
    transferred += [e.path for e in todo]
    return SyncResult(transferred=tuple(sorted(transferred)), unchanged=tuple(sorted(unchanged)),
                      removed=tuple(sorted(removed)), bytes=nbytes)
