"""Fail fast, before any trial starts: can this process list, write, read and delete at a URI? One line
naming the URI and what failed, in words a user can act on (and right for a real S3's rules)."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

import pyarrow.fs as pafs

from xtra.storage.backends import s3_endpoint
from xtra.storage.names import StorageError, explain_error, one_line
from xtra.storage.store import Storage


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
        raise StorageError(f"{probe.uri}: {_diagnose(e, probe.kind, bucket, 'list', probe.base)}") from None
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
                raise StorageError(f"{probe.uri}: {_diagnose(e, probe.kind, bucket, op, probe.base)}") from None
    return Storage.from_uri(text)



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
        raise StorageError(f"{st.uri}: cannot write: {e.strerror or one_line(e)}") from None


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


def _diagnose(e: BaseException, kind: str, bucket: str, op: str, base: str = "") -> str:
    """Turn a pyarrow/AWS error into what failed, in words a user can act on."""
    msg = str(e)
    m = _AWS_CODE.search(msg)
    code, operation = (m.group(1), m.group(3)) if m else ("", "")
    endpoint = s3_endpoint() if kind == "s3" else None
    where = f"endpoint {endpoint}" if endpoint else f"the {kind.upper()} service"
    if code in ("NETWORK_CONNECTION", "REQUEST_TIME_TOO_SKEWED") or "Could not connect" in msg or "resolve host" in msg:
        return f"cannot reach {where} ({one_line(msg.split('Details:')[-1])})"
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
                f"({code or one_line(msg)})")
    if code == "ACCESS_DENIED" or "AccessDenied" in msg or "403" in msg:
        # IAM's rules for S3: a listing is s3:ListBucket on the bucket's ARN (limited to a prefix by an
        # s3:prefix condition); object calls are authorised on the objects' ARNs.
        prefix = base.split("/", 1)[1] if "/" in base else ""
        objects = f"arn:aws:s3:::{bucket}/{prefix + '/' if prefix else ''}*"
        action = {"list": f"s3:ListBucket on arn:aws:s3:::{bucket}", "write": f"s3:PutObject on {objects}",
                  "read": f"s3:GetObject on {objects}", "delete": f"s3:DeleteObject on {objects}"}.get(op, op)
        return f"permission denied to {op} ({operation or op}; the credentials need {action})"
    return f"cannot {op}: {explain_error(e)}"

