"""Conditional writes on an object store, for the study's lease: create an object only if it is absent
(`If-None-Match: *`), replace it only if it is still the version read (`If-Match: <etag>`). S3 (since
2024), MinIO and the local test server (moto) answer 412 when the condition fails, so of two drivers
writing at once exactly one succeeds, with no wait.

pyarrow's S3 filesystem sends no conditional PUT, so this goes through boto3 when it is installed; a
store or an environment without them raises `Unsupported`, and the caller keeps its fallback (write,
wait, read back)."""

from __future__ import annotations

from typing import Any

from xtra.storage.backends import s3_endpoint
from xtra.storage.names import StorageError, explain_error
from xtra.storage.store import Storage

MAX_LEASE_BYTES = 1 << 20  # a lease is a small JSON document
TIMEOUT_S = 10.0  # per request (connect, read); two attempts


class Unsupported(Exception):
    """This storage (or this environment) cannot write conditionally: use the fallback."""


def _client(storage: Storage, timeout: float) -> tuple[Any, str, str]:
    """(boto3 S3 client, bucket, key prefix) for an s3:// storage, else Unsupported. ``timeout`` bounds
    each request's connect and read: a lease must hear from a silent endpoint in about a beat."""
    if storage.kind != "s3":
        raise Unsupported(f"{storage.kind} storage")
    try:
        import boto3
        import botocore.config
    except ImportError:
        raise Unsupported("boto3 is not installed") from None
    import os

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    endpoint = s3_endpoint()
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name=region or ("us-east-1" if endpoint else None),
                          config=botocore.config.Config(retries={"max_attempts": 2}, connect_timeout=timeout,
                                                        read_timeout=timeout))
    bucket, _, prefix = storage.base.partition("/")
    return client, bucket, prefix


def _key(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def _code(err: Exception) -> tuple[str, int]:
    resp = getattr(err, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", "")), int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def read(storage: Storage, rel: str, *, timeout: float = TIMEOUT_S) -> tuple[bytes, str] | None:
    """(bytes, etag) of an object, or None if absent."""
    client, bucket, prefix = _client(storage, timeout)
    try:
        obj = client.get_object(Bucket=bucket, Key=_key(prefix, rel))
        data = obj["Body"].read(MAX_LEASE_BYTES + 1)
    except Exception as e:  # noqa: BLE001 - botocore's ClientError and connection errors
        code, status = _code(e)
        if code in ("NoSuchKey", "404") or status == 404:
            return None
        raise StorageError(f"{storage.uri_of(rel)}: cannot read: {explain_error(e)}") from None
    if len(data) > MAX_LEASE_BYTES:
        raise StorageError(f"{storage.uri_of(rel)}: refused: longer than {MAX_LEASE_BYTES} bytes")
    return data, obj["ETag"]


def put(storage: Storage, rel: str, data: bytes, *, etag: str | None = None, timeout: float = TIMEOUT_S
        ) -> str | None:
    """Write `rel` only if it is absent (etag None) or still at `etag`. The new version's etag if
    written (the next conditional write's `etag`), None if the condition failed (another writer got
    there first); Unsupported if the store ignores conditions."""
    client, bucket, prefix = _client(storage, timeout)
    cond = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
    try:
        written = client.put_object(Bucket=bucket, Key=_key(prefix, rel), Body=data, **cond)
    except Exception as e:  # noqa: BLE001
        code, status = _code(e)
        if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 409:
            return None
        if etag is not None and (code in ("NoSuchKey", "404") or status == 404):
            return None  # removed since it was read: the caller looks again
        if status == 501 or code in ("NotImplemented", "InvalidArgument"):
            raise Unsupported(f"the store refused a conditional write ({code})") from None
        raise StorageError(f"{storage.uri_of(rel)}: cannot write: {explain_error(e)}") from None
    return str(written["ETag"])
