"""From a URI to a pyarrow filesystem: a local path, `file://`, S3 (endpoint, region and timeouts
from the environment), GCS, or any scheme an installed fsspec package provides."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from xtra.storage.names import StorageError, one_line

SCHEMES = ("local path", "file://", "s3://", "gs://")
REQUEST_TIMEOUT_S = 120.0  # object stores: the longest wait for the next byte of one request


def resolve(uri: str | os.PathLike[str], connect_timeout: float | None = None,
            attempts: int | None = None) -> tuple[str, pafs.FileSystem, str, str]:
    """`(uri, fs, base, kind)` of a URI (see `Storage.from_uri`)."""
    text = os.fspath(uri).strip()
    if not text:
        raise StorageError("storage URI is empty (allowed: " + ", ".join(SCHEMES) + ")")
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        return str(path), pafs.LocalFileSystem(), str(path), "local"
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        path = Path(parsed.path or "/").expanduser().resolve()
        return str(path), pafs.LocalFileSystem(), str(path), "local"
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if scheme in ("s3", "s3a", "gs", "gcs") and not bucket:
        raise StorageError(f"{text}: no bucket name (expected {scheme}://BUCKET/PREFIX)")
    base = f"{bucket}/{prefix}" if prefix else bucket
    norm = f"{scheme}://{base}"
    if scheme in ("s3", "s3a"):
        return f"s3://{base}", _s3_filesystem(bucket, connect_timeout, attempts), base, "s3"
    if scheme in ("gs", "gcs"):
        kw: dict[str, Any] = {}
        if connect_timeout is not None:
            kw["retry_time_limit"] = datetime.timedelta(seconds=connect_timeout)
        return f"gs://{base}", pafs.GcsFileSystem(**kw), base, "gcs"
    try:
        import fsspec
        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as e:
        raise StorageError(f"{text}: unsupported scheme {scheme!r} (allowed: {', '.join(SCHEMES)}, "
                           f"or a scheme an installed fsspec package provides): {one_line(e)}") from None
    return norm, pafs.PyFileSystem(pafs.FSSpecHandler(fs)), base, "fsspec"


def s3_endpoint() -> str | None:
    """The S3-compatible endpoint the environment names (MinIO, Ceph, moto), or None for AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _s3_filesystem(bucket: str, connect_timeout: float | None, attempts: int | None) -> pafs.S3FileSystem:
    kw: dict[str, Any] = {}
    endpoint = s3_endpoint()
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

