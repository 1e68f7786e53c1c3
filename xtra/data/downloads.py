"""Downloads of the registered sets' official distributions: fetched into a staging folder, each file
checked against its checksum, tarballs extracted safely, and only then moved into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path

from xtra.data.collection import is_path_collection
from xtra.data.memory import clear_cache
from xtra.data.registry import data_home
from xtra.data.sets import RemoteFile, dataset_spec


class DownloadError(ValueError):
    """A download failed or its checksum did not match; nothing was put in place."""


def _algorithm(expected: str) -> str:
    if len(expected) == 64:
        return "sha256"
    if len(expected) == 32:
        return "md5"
    raise ValueError(f"checksum {expected!r} is neither a sha256 (64 hex digits) nor an md5 (32 hex digits)")


def _expected(remote: RemoteFile, checksums: dict[str, str] | None) -> tuple[str, str, int | None]:
    """(algorithm, hex digest, size or None) that a downloaded file must match."""
    if checksums and remote.filename in checksums:
        value = checksums[remote.filename].lower()
        return _algorithm(value), value, None
    if remote.sha256:
        return "sha256", remote.sha256, remote.size
    return "md5", remote.md5, remote.size


def _fetch(url: str, target: Path, progress: Callable[[int, int | None], None] | None) -> dict[str, str]:
    """Stream ``url`` into ``target``; return its md5 and sha256."""
    digests = {"md5": hashlib.md5(usedforsecurity=False), "sha256": hashlib.sha256()}
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            total = response.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                for d in digests.values():
                    d.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            if progress and total is None:
                progress(done, done)  # finish the line
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot download {url}: {reason}") from None
    return {k: d.hexdigest() for k, d in digests.items()}


def _progress_printer(label: str) -> Callable[[int, int | None], None]:
    def show(done: int, total: int | None) -> None:
        of = f" / {total / 1e6:.1f}" if total else ""
        end = "\n" if total and done >= total else ""
        print(f"\r{label}: {done / 1e6:.1f}{of} MB", end=end, file=sys.stderr, flush=True)

    return show


def extract_archive(tarball: Path, into: Path) -> None:
    try:
        if not hasattr(tarfile, "data_filter"):  # Python < 3.11.4: extractall would follow any member path
            raise DownloadError(f"{tarball.name}: not extracted: Python {sys.version.split()[0]} has no safe tar "
                                "extraction (tarfile's 'data' filter, Python >= 3.11.4); upgrade Python, or "
                                f"extract it yourself and point data.root at it")
        with tarfile.open(tarball, "r:gz") as tar:
            tar.extractall(into, filter="data")  # member paths stay inside `into`, no links out, no devices
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DownloadError(f"{tarball.name}: cannot extract ({e})") from None


def _put(src: Path, dst: Path) -> None:
    """Move a file or folder into place; an existing folder is swapped out, then removed."""
    if src.is_dir() and dst.exists():
        old = dst.with_name(f".old-{dst.name}-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def download(name: str, dest_root: Path | None = None, base_url: str | None = None, progress: bool = True,
             checksums: dict[str, str] | None = None) -> Path:
    """Fetch an official distribution into ``dest_root/<name>`` (default root: ``data_home()``).

    Files are fetched from ``base_url`` (else ``$XTRA_DATA_BASE_URL``, else the official source) into a
    staging folder beside the destination, each checked against its checksum (``checksums`` maps a
    file name to an md5 or sha256 hex digest and overrides the built-in one), CIFAR tarballs are
    extracted there, and only then is everything moved into place with ``os.replace``. On any error
    the staging folder is removed and nothing new is in place. Returns the dataset's folder.
    """
    if is_path_collection(name):
        raise ValueError(f"{name}: imagefolder:/wds: collections are your own files; there is nothing to download")
    spec = dataset_spec(name)
    if not spec.remotes:
        what = "bundled with scikit-learn" if spec.kind == "digits" else "generated on the fly"
        raise ValueError(f"dataset {name!r} is {what}; there is nothing to download")
    names = [r.filename for r in spec.remotes]
    unknown = sorted(set(checksums or {}) - set(names))
    if unknown:
        raise ValueError(f"checksums given for {', '.join(unknown)}, which {name} does not have "
                         f"(its files: {', '.join(names)})")
    root = Path(dest_root).expanduser() if dest_root is not None else data_home()
    base = base_url or os.environ.get("XTRA_DATA_BASE_URL", "") or spec.base_url
    base = base if base.endswith("/") else base + "/"
    dest = root / name
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        for remote in spec.remotes:
            url = base + remote.filename
            part = staging / remote.filename
            hashes = _fetch(url, part, _progress_printer(remote.filename) if progress else None)
            algo, want, size = _expected(remote, checksums)
            if size is not None and part.stat().st_size != size:
                raise DownloadError(f"{remote.filename}: size mismatch from {url} (expected {size} bytes, "
                                    f"got {part.stat().st_size}); the download was removed")
            got = hashes[algo]
            if got != want:
                raise DownloadError(f"{remote.filename}: {algo} mismatch from {url} (expected {want}, got {got}); "
                                    "the download was removed")
        if spec.kind == "cifar":
            for remote in spec.remotes:
                extract_archive(staging / remote.filename, staging)
                (staging / remote.filename).unlink()
            if not (staging / spec.subdir).is_dir():
                raise DownloadError(f"{spec.remotes[0].filename}: has no {spec.subdir}/ folder")
        # Everything verified: move into place.
        if not dest.exists():
            os.chmod(staging, 0o755)  # mkdtemp made it private
            os.replace(staging, dest)
        else:
            for item in list(staging.iterdir()):
                _put(item, dest / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    clear_cache()
    return dest
