"""The threat model (docs/security.md), finding by finding (issue 24): names from storage never write
outside their directory, nothing runs a command this invocation did not ask for, secrets stay out of
the study directory, bad values end in one line before any work, and searches survive their driver."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from xtra.storage import Storage, StorageError, pull

SHA = hashlib.sha256(b"evil").hexdigest()


# ---- names from storage (finding 1: path traversal) ---------------------------------------------
def _boto(server):
    boto3 = pytest.importorskip("boto3")
    return boto3.client("s3", endpoint_url=server.env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=server.env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=server.env["AWS_SECRET_ACCESS_KEY"])


def _manifest(name: str, key: str | None = None, size: int = 4) -> bytes:
    key = key if key is not None else f"_gen/000001-abcd/{name}"
    return json.dumps({"format": "xtra-dir/1", "generation": "000001-abcd", "written": "now",
                       "files": {name: {"key": key, "size": size, "sha256": SHA, "mtime_ns": 1}}}).encode()


# Each is a committed directory `trials/t1` whose manifest names a file outside it.
EVIL = {
    "dotdot": lambda tmp: _manifest("../../../../../escaped.txt"),
    "absolute": lambda tmp: _manifest(str(tmp / "absolute.txt")),
    "key-dotdot": lambda tmp: _manifest("ok.txt", key="_gen/000001-abcd/../../../../escaped.txt"),
    "huge": lambda tmp: _manifest("ok.txt", size=1 << 60),
}


def _plant(client, bucket: str, prefix: str, manifest: bytes) -> None:
    client.put_object(Bucket=bucket, Key=f"{prefix}/study.toml", Body=b'name = "evil"\n')
    client.put_object(Bucket=bucket, Key=f"{prefix}/trials/t1/_manifest.json", Body=manifest)
    for key in ("_gen/000001-abcd/ok.txt", "_gen/000001-abcd/../../../../escaped.txt", "escaped.txt"):
        client.put_object(Bucket=bucket, Key=f"{prefix}/trials/t1/{key}", Body=b"evil")


def _written_outside(tmp: Path, inside: Path) -> list[str]:
    return [p.as_posix() for p in tmp.rglob("*") if p.is_file() and not p.is_relative_to(inside)
            and p.name in ("escaped.txt", "absolute.txt", "ok.txt")]


@pytest.fixture
def evil_bucket(s3_server, s3_bucket):
    return _boto(s3_server), s3_bucket.removeprefix("s3://")


@pytest.mark.parametrize("kind", sorted(EVIL))
def test_pull_refuses_a_malicious_manifest_and_writes_nothing(evil_bucket, tmp_path, kind):
    client, bucket = evil_bucket
    work = tmp_path / "a" / "b" / "c" / "d" / "e"
    _plant(client, bucket, "study", EVIL[kind](tmp_path))
    with pytest.raises(StorageError, match=r"^s3://.*(refused|unreadable manifest)") as err:
        pull(f"s3://{bucket}/study", work / "copy")
    assert "\n" not in str(err.value)
    assert _written_outside(tmp_path, work / "copy") == []
    assert not (work / "copy" / "trials").exists()  # nothing written, not even inside


@pytest.mark.parametrize("kind", sorted(EVIL))
def test_download_dir_refuses_a_malicious_manifest(evil_bucket, tmp_path, kind):
    client, bucket = evil_bucket
    _plant(client, bucket, "study", EVIL[kind](tmp_path))
    st = Storage.from_uri(f"s3://{bucket}/study")
    local = tmp_path / "x" / "y" / "z" / "w" / "v" / "t1"
    with pytest.raises(StorageError, match=r"trials/t1/_manifest.json.*(refused|unreadable manifest)"):
        st.download_dir("trials/t1", local)
    assert _written_outside(tmp_path, local) == [] and not local.exists()


def test_plain_key_with_dotdot_is_refused(evil_bucket, tmp_path):
    """A plain object whose key holds '..' (S3 keys are arbitrary strings) names no local file."""
    client, bucket = evil_bucket
    client.put_object(Bucket=bucket, Key="study/study.toml", Body=b'name = "evil"\n')
    client.put_object(Bucket=bucket, Key="study/trials/t1/../../../../escaped.txt", Body=b"evil")
    work = tmp_path / "a" / "b" / "c" / "d"
    try:
        pull(f"s3://{bucket}/study", work / "copy")
    except StorageError as err:
        assert "refused" in str(err)
    assert _written_outside(tmp_path, work / "copy") == []


def test_download_never_writes_through_a_planted_symlink(store_with_commit, tmp_path):
    st, rel = store_with_commit
    local = tmp_path / "copy"
    (local).mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (local / "sub").symlink_to(outside)
    with pytest.raises(StorageError, match="symbolic link"):
        st.download_dir(rel, local)
    assert list(outside.iterdir()) == []


@pytest.fixture
def store_with_commit(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("hello")
    st = Storage.from_uri(tmp_path / "store")
    st.upload_dir(src, "d")
    return st, "d"


def test_manifest_with_bad_records_is_one_line(tmp_path):
    st = Storage.from_uri(tmp_path / "store")
    for bad in (b"[]", b"{}", _manifest("ok.txt", size=-1), _manifest("_gen/x"), _manifest("a//b"),
                _manifest("ok.txt").replace(SHA.encode(), b"zz"), b'{"format": "xtra-dir/1", "generation": "../x", '
                b'"written": "", "files": {}}'):
        st.write_bytes("d/_manifest.json", bad)
        with pytest.raises(StorageError) as err:
            st.manifest("d")
        assert "\n" not in str(err.value) and "d/_manifest.json" in str(err.value)


def test_object_longer_than_its_record_is_refused_early(s3_bucket, tmp_path):
    st = Storage.from_uri(s3_bucket + "/s")
    st.write_bytes("d/_gen/000001-abcd/ok.txt", b"x" * (3 << 20))
    st.write_bytes("d/_manifest.json", _manifest("ok.txt", size=4))
    with pytest.raises(StorageError, match="does not match its manifest record"):
        st.download_dir("d", tmp_path / "d")
    assert not (tmp_path / "d" / "ok.txt").exists()


@pytest.mark.slow
def test_trial_download_and_monitor_refuse_a_malicious_manifest(evil_bucket, tmp_path, monkeypatch):
    """What every trial runs first (TrialSync.download) and the live monitor's refresh."""
    from xtra.studies.ray.monitor import Monitor
    from xtra.studies.ray.trainable import TrialSync

    client, bucket = evil_bucket
    monkeypatch.setenv("XTRA_SCRATCH", str(tmp_path / "s1" / "s2" / "s3" / "s4" / "s5" / "scratch"))
    _plant(client, bucket, "study", EVIL["dotdot"](tmp_path))
    sync = TrialSync(f"s3://{bucket}/study", "t1")
    with pytest.raises(StorageError, match="refused file name"):
        sync.download()
    mon = Monitor(None, None, tmp_path / "m1" / "m2" / "m3" / "m4" / "m5" / "study")
    mon._refresh(sync, "t1")  # the monitor keeps going (the runner's pull reports it), writing nothing
    assert _written_outside(tmp_path, sync.run_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize("command", [["study", "status"], ["report", "build"]])
def test_status_and_report_refuse_a_malicious_manifest(evil_bucket, tmp_path, monkeypatch, command):
    from typer.testing import CliRunner

    from xtra.cli.main import app

    client, bucket = evil_bucket
    _plant(client, bucket, "study", EVIL["dotdot"](tmp_path))
    copy = tmp_path / "c1" / "c2" / "c3" / "c4" / "c5" / "copy"
    monkeypatch.setenv("XTRA_CACHE", str(copy))
    res = CliRunner().invoke(app, [*command, f"s3://{bucket}/study"])
    assert res.exit_code != 0, res.output
    assert "refused file name '" in res.output and "../../../" in res.output
    assert isinstance(res.exception, SystemExit)  # a one-line error, not a traceback
    assert _written_outside(tmp_path, copy) == []
