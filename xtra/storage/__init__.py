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

Modules: `names` (relative names and their checks), `manifest` (the commit record), `backends`
(URI -> pyarrow filesystem), `store` (the `Storage` object: plain files), `commits` (committed
directories: upload, download), `sync` (`pull`), `check` (fail-fast diagnosis), `conditional`
(create-if-absent / replace-if-unchanged writes, for the lease), `bench` (upload overhead).
"""

from xtra.storage.backends import REQUEST_TIMEOUT_S, SCHEMES
from xtra.storage.check import check
from xtra.storage.manifest import GENERATIONS, MANIFEST, MANIFEST_FORMAT, Entry, FileRecord, Manifest, SyncResult
from xtra.storage.names import StorageError
from xtra.storage.store import Storage
from xtra.storage.sync import pull

__all__ = ["GENERATIONS", "MANIFEST", "MANIFEST_FORMAT", "REQUEST_TIMEOUT_S", "SCHEMES", "Entry", "FileRecord",
           "Manifest", "Storage", "StorageError", "SyncResult", "check",
           "pull"]
