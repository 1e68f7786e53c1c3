"""xtra.storage against a local directory and a real S3 protocol server (moto) on 127.0.0.1."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xtra.benchmarks.storage import measure_upload, measure_upload_local_s3
from xtra.storage import GENERATIONS, Storage, StorageError, check, pull
from xtra.testing.s3server import LocalS3Server, free_port


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage.from_uri(tmp_path / "store")
    return Storage.from_uri(request.getfixturevalue("s3_bucket") + "/studies/one")


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


FILES = {"config.json": b'{"a": 1}\n', "metrics.jsonl": b'{"step": 1}\n', "checkpoint.pt": os.urandom(300_000),
         "pictures/k2.png": b"\x89PNG..."}


# ---- plain files --------------------------------------------------------------------------------
def test_plain_file_round_trips(store):
    assert not store.exists("a/b.bin")
    uri = store.write_bytes("a/b.bin", b"\x00\x01bytes")
    assert uri == store.uri + "/a/b.bin"
    assert store.exists("a/b.bin") and store.is_file("a/b.bin") and store.exists("a")
    assert store.read_bytes("a/b.bin") == b"\x00\x01bytes"
    store.write_text("t.txt", "héllo")
    assert store.read_text("t.txt") == "héllo"
    store.write_json("j.json", {"b": [1, 2], "a": None})
    assert store.read_json("j.json") == {"a": None, "b": [1, 2]}
    store.write_bytes("a/b.bin", b"replaced")  # overwrite
    assert store.read_bytes("a/b.bin") == b"replaced"
    entries = store.list()
    assert [(e.path, e.size) for e in entries] == [("a/b.bin", 8), ("j.json", len(store.read_bytes("j.json"))),
                                                   ("t.txt", len("héllo".encode()))]
    assert all(e.mtime_ns for e in entries)
    assert [e.path for e in store.list("a")] == ["b.bin"]
    assert store.list("nothing/here") == []
    with pytest.raises(FileNotFoundError, match=r"/nope\.txt: no such file"):
        store.read_bytes("nope.txt")
    store.delete("t.txt")
    assert not store.exists("t.txt")
    store.delete("a")
    assert not store.exists("a/b.bin")
    store.delete("never/was")  # absent: nothing to do
    assert [e.path for e in store.list()] == ["j.json"]


def test_put_and_get_file_stream_whole_files(store, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(9 << 20))  # more than one 8 MiB chunk
    rec = store.put_file(src, "x/big.bin")
    assert rec.size == src.stat().st_size
    dst = tmp_path / "out" / "big.bin"
    assert store.get_file("x/big.bin", dst, mtime_ns=123_000_000_000) == rec.size
    assert dst.read_bytes() == src.read_bytes() and dst.stat().st_mtime_ns == 123_000_000_000
    assert [p.name for p in dst.parent.iterdir()] == ["big.bin"]  # no temp file left


def test_local_writes_leave_no_temp_files(tmp_path):
    st = Storage.from_uri(tmp_path)
    for i in range(3):
        st.write_json("s/runs.json", {"i": i})
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["runs.json"]
    assert json.loads((tmp_path / "s" / "runs.json").read_text()) == {"i": 2}


# ---- committed directories ----------------------------------------------------------------------
def test_directory_upload_download_syncs_only_changes(store, tmp_path):
    src = _tree(tmp_path / "trial", FILES)
    first = store.upload_dir(src, "trials/h1")
    assert first.transferred == tuple(sorted(FILES)) and first.unchanged == ()
    assert store.committed_dirs("trials") == ["h1"]
    assert store.read_member("trials/h1", "metrics.jsonl") == FILES["metrics.jsonl"]

    dst = tmp_path / "cache" / "h1"
    got = store.download_dir("trials/h1", dst)
    assert got.transferred == tuple(sorted(FILES)) and _read_tree(dst) == FILES

    # Nothing changed: nothing moves either way.
    assert store.upload_dir(src, "trials/h1").transferred == ()
    assert store.download_dir("trials/h1", dst).transferred == ()

    # A new checkpoint and one more metrics row; a picture removed.
    (src / "checkpoint.pt").write_bytes(os.urandom(300_001))
    with open(src / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 2}\n')
    (src / "pictures" / "k2.png").unlink()
    (src / ".probe.json.abc123.tmp").write_bytes(b"half")  # an atomic write in flight: never committed
    sent = store.upload_dir(src, "trials/h1")
    assert sent.transferred == ("checkpoint.pt", "metrics.jsonl") and sent.unchanged == ("config.json",)
    got = store.download_dir("trials/h1", dst)
    assert got.transferred == ("checkpoint.pt", "metrics.jsonl") and got.removed == ("pictures/k2.png",)
    assert _read_tree(dst) == {n: b for n, b in _read_tree(src).items() if not n.endswith(".tmp")}
    assert store.manifest("trials/h1").seq == 3

    # Old generations are collected: only the ones the last commit references remain.
    m = store.manifest("trials/h1")
    in_use = {r.key.split("/")[1] for r in m.files.values()}
    present = {e.path.split("/")[1] for e in store.list("trials/h1") if e.path.startswith(GENERATIONS + "/")}
    assert present == in_use and len(in_use) == 2  # config.json still from the first commit

    # Checksum mode notices a same-size, same-mtime local change that the fast check cannot.
    victim = dst / "config.json"
    st = victim.stat()
    victim.write_bytes(b'{"a": 2}\n')
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.download_dir("trials/h1", dst).transferred == ()
    assert store.download_dir("trials/h1", dst, checksum=True).transferred == ("config.json",)
    assert victim.read_bytes() == FILES["config.json"]

    # include= leaves checkpoints out (e.g. `status` reading only small files).
    light = tmp_path / "light"
    store.download_dir("trials/h1", light, include=lambda n: n != "checkpoint.pt")
    assert sorted(_read_tree(light)) == ["config.json", "metrics.jsonl"]


def test_never_committed_directory_is_absent(store, tmp_path):
    assert store.manifest("trials/none") is None
    assert store.download_dir("trials/none", tmp_path / "x") is None
    with pytest.raises(FileNotFoundError, match=r"no file 'trial.json' \(committed or plain\)"):
        store.read_member("trials/none", "trial.json")
    # Objects of a generation without a manifest (an uploader that died before its commit).
    store.write_bytes(f"trials/orphan/{GENERATIONS}/000001-deadbeef/trial.json", b"{}")
    assert store.manifest("trials/orphan") is None
    assert store.download_dir("trials/orphan", tmp_path / "o") is None
    assert store.committed_dirs("trials") == [] and store.subdirs("trials") == []


def test_trial_writing_in_place_in_local_storage(tmp_path):
    """Single machine, storage = the study directory: the same calls work and move nothing."""
    st = Storage.from_uri(tmp_path / "study")
    run_dir = _tree(tmp_path / "study" / "trials" / "h4", FILES)
    assert st.is_directory_itself(run_dir, "trials/h4") and not st.is_directory_itself(tmp_path, "trials/h4")
    assert st.upload_dir(run_dir, "trials/h4").unchanged == tuple(sorted(FILES))
    assert st.download_dir("trials/h4", run_dir).transferred == ()
    assert st.download_dir("trials/h5", tmp_path / "study" / "trials" / "h5") is None
    assert st.read_member("trials/h4", "config.json") == FILES["config.json"]  # plain files
    assert _read_tree(run_dir) == FILES and st.manifest("trials/h4") is None
    copy = tmp_path / "copy"
    assert st.download_dir("trials/h4", copy).transferred == tuple(sorted(FILES))
    assert _read_tree(copy) == FILES


def test_plain_files_beside_a_commit(store, tmp_path):
    """The trial's process commits its files; the driver writes status.json plain; readers see both."""
    src = _tree(tmp_path / "trial", {**FILES, "status.json": b"stale local copy"})
    # The driver records a failure before the trial ever committed: visible, though not committed.
    store.write_json("trials/h3/status.json", {"status": "failed"})
    assert store.subdirs("trials") == ["h3"] and store.committed_dirs("trials") == []
    assert json.loads(store.read_member("trials/h3", "status.json")) == {"status": "failed"}
    dst = tmp_path / "cache"
    assert store.download_dir("trials/h3", dst).transferred == ("status.json",)

    # The trial commits everything but the driver's name; a re-commit leaves the plain file alone.
    sent = store.upload_dir(src, "trials/h3", include=lambda n: n != "status.json")
    assert "status.json" not in sent.transferred
    (src / "metrics.jsonl").write_bytes(b'{"step": 9}\n')
    store.upload_dir(src, "trials/h3", include=lambda n: n != "status.json")
    got = store.download_dir("trials/h3", dst)
    assert got.transferred == tuple(sorted(FILES))  # status.json was already there
    assert _read_tree(dst) == {**FILES, "metrics.jsonl": b'{"step": 9}\n', "status.json":
                               store.read_bytes("trials/h3/status.json")}
    assert pull(store.uri, tmp_path / "pulled").bytes > 0
    assert (tmp_path / "pulled" / "trials" / "h3" / "status.json").read_bytes() == (dst / "status.json").read_bytes()

    # A name written both ways: the commit wins.
    store.upload_dir(src, "trials/h3")
    assert store.read_member("trials/h3", "status.json") == b"stale local copy"
    store.download_dir("trials/h3", dst)
    assert (dst / "status.json").read_bytes() == b"stale local copy"


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from xtra.storage import Storage
    uri, src, rel, after = sys.argv[1:]
    def progress(name, size):
        if name == after:
            os.kill(os.getpid(), signal.SIGKILL)  # the node dies mid-upload
    Storage.from_uri(uri).upload_dir(src, rel, progress=progress)
""")


def _upload_and_die(store: Storage, src: Path, rel: str, after: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILLER, store.uri, str(src), rel, after], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def test_upload_killed_midway_leaves_last_commit(store, tmp_path):
    src = _tree(tmp_path / "trial", FILES)
    # A first upload killed after one file landed: the directory does not exist for readers.
    _upload_and_die(store, src, "trials/h2", after="checkpoint.pt")
    assert any(e.path.startswith(GENERATIONS) for e in store.list("trials/h2"))  # bytes did land
    assert store.manifest("trials/h2") is None and store.committed_dirs("trials") == []
    assert store.download_dir("trials/h2", tmp_path / "none") is None

    # Commit v1, then a second upload of changed files dies: readers still get exactly v1.
    store.upload_dir(src, "trials/h2")
    v1 = _read_tree(src)
    (src / "checkpoint.pt").write_bytes(os.urandom(300_002))
    (src / "metrics.jsonl").write_bytes(b'{"step": 1}\n{"step": 2}\n')
    _upload_and_die(store, src, "trials/h2", after="checkpoint.pt")
    dst = tmp_path / "reader"
    store.download_dir("trials/h2", dst)
    assert _read_tree(dst) == v1
    assert store.read_member("trials/h2", "checkpoint.pt") == v1["checkpoint.pt"]

    # The retried upload commits; the dead uploads' objects are collected by later commits.
    store.upload_dir(src, "trials/h2")
    (src / "metrics.jsonl").write_bytes(b'{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    store.upload_dir(src, "trials/h2")
    store.download_dir("trials/h2", dst)
    assert _read_tree(dst) == _read_tree(src)
    m = store.manifest("trials/h2")
    gens = {e.path.split("/")[1] for e in store.list("trials/h2") if e.path.startswith(GENERATIONS + "/")}
    assert gens == {r.key.split("/")[1] for r in m.files.values()}


def test_pull_copies_committed_state_and_plain_files(store, tmp_path):
    store.write_text("study.toml", "name = 'x'\n")
    store.write_bytes("results.parquet", b"PAR1....PAR1")
    store.write_text("report/index.html", "<html></html>")
    for h in ("aaa", "bbb"):
        store.upload_dir(_tree(tmp_path / h, {**FILES, "trial.json": h.encode()}), f"trials/{h}")
    store.write_bytes(f"trials/ccc/{GENERATIONS}/000001-0badc0de/checkpoint.pt", b"half")  # never committed

    out = tmp_path / "pulled"
    res = pull(store.uri, out)
    assert (out / "study.toml").read_text() == "name = 'x'\n"
    assert (out / "report" / "index.html").read_text() == "<html></html>"
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["aaa", "bbb"]
    assert _read_tree(out / "trials" / "bbb") == {**FILES, "trial.json": b"bbb"}
    assert len(res.transferred) == 3 + 2 * (len(FILES) + 1)

    light = pull(store.uri, tmp_path / "light", include=lambda p: not p.endswith(".pt") and not p.endswith(".parquet"))
    assert not any(n.endswith((".pt", ".parquet")) for n in light.transferred)
    assert sorted(_read_tree(tmp_path / "light" / "trials" / "aaa")) == sorted(set(FILES) - {"checkpoint.pt"}
                                                                                | {"trial.json"})

    # Again: nothing to transfer. After one trial's new commit: only its changed file.
    assert pull(store.uri, out).transferred == ()
    (tmp_path / "aaa" / "trial.json").write_bytes(b"aaa-finished")
    store.upload_dir(tmp_path / "aaa", "trials/aaa")
    assert pull(store.uri, out).transferred == ("trials/aaa/trial.json",)
    assert (out / "trials" / "aaa" / "trial.json").read_bytes() == b"aaa-finished"

    with pytest.raises(StorageError, match="nothing there to pull"):
        pull(store.uri_of("no/such/study"), tmp_path / "empty")
    if store.is_local:
        with pytest.raises(StorageError, match="is the storage directory .* itself"):
            pull(store.uri, store.base)


# ---- URIs ---------------------------------------------------------------------------------------
def test_from_uri_forms(tmp_path, s3_server):
    local = Storage.from_uri(tmp_path / "a")
    assert local.kind == "local" and local.base == str(tmp_path / "a") and local.ray_storage() == (local.base, None)
    assert Storage.from_uri(f"file://{tmp_path}/a").uri == local.uri
    assert local.local_path("x/y") == tmp_path / "a" / "x" / "y"
    s3 = Storage.from_uri("s3://bkt/some/prefix/")
    assert (s3.kind, s3.uri, s3.base) == ("s3", "s3://bkt/some/prefix", "bkt/some/prefix")
    path, fs = s3.ray_storage()
    assert path == "bkt/some/prefix" and fs is s3.fs
    sub = s3.sub("trials/h")
    assert (sub.uri, sub.base) == ("s3://bkt/some/prefix/trials/h", "bkt/some/prefix/trials/h")
    assert pickle.loads(pickle.dumps(s3)).uri == s3.uri  # travels as its URI
    with pytest.raises(StorageError, match=r"s3:///x: no bucket name"):
        Storage.from_uri("s3:///x")
    with pytest.raises(StorageError, match=r"nosuchscheme://b/p: unsupported scheme 'nosuchscheme'"):
        Storage.from_uri("nosuchscheme://b/p")
    with pytest.raises(ValueError, match=r"'\.\.' is not allowed"):
        local.read_bytes("../escape")


def test_endpoint_url_s3_takes_precedence(s3_bucket, s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    st = Storage.from_uri(s3_bucket + "/p")
    st.write_text("x.txt", "via AWS_ENDPOINT_URL_S3")
    assert st.read_text("x.txt") == "via AWS_ENDPOINT_URL_S3"


# ---- check --------------------------------------------------------------------------------------
def test_check_passes_and_leaves_nothing(s3_bucket, tmp_path):
    st = check(s3_bucket + "/study")
    assert st.uri == s3_bucket + "/study" and st.list() == []
    local = check(tmp_path / "new" / "study")
    assert (tmp_path / "new" / "study").is_dir() and local.list() == []


def test_check_missing_bucket(s3_server):
    with pytest.raises(StorageError) as e:
        check("s3://no-such-bucket-xtra/study")
    assert str(e.value) == "s3://no-such-bucket-xtra/study: bucket 'no-such-bucket-xtra' does not exist"


def test_check_unreachable_endpoint(s3_server, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(StorageError) as e:
        check("s3://bkt/study")
    msg = str(e.value)
    assert msg.startswith(f"s3://bkt/study: cannot reach endpoint {endpoint} (") and "\n" not in msg


def test_check_local_path_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(StorageError, match=r"/f: is a file, not a directory$"):
        check(tmp_path / "f")
    with pytest.raises(StorageError, match=r"/absent: no such directory$"):
        check(tmp_path / "absent", write=False)


@pytest.fixture(scope="module")
def iam_s3(s3_server):
    """A second moto server that enforces IAM: a read-only user, a read-write user, a bucket."""
    boto3 = pytest.importorskip("boto3")
    # Moto checks credentials after this many unauthenticated requests (the set-up below).
    with LocalS3Server(extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "9"}) as server:
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        keys = {}
        # As AWS documents them: listing (ListObjectsV2) is s3:ListBucket on the bucket's ARN, objects
        # are s3:GetObject / s3:PutObject on "arn:aws:s3:::BUCKET/*".
        reader = [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::guarded"},
                  {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::guarded/*"},
                  # Moto >= 5.2.6 departs from AWS here: it authorises a listing as the action
                  # "s3:ListObjectsV2" (its API operation's name), which is no IAM action in AWS (where
                  # s3:ListBucket above grants it). Allowed for moto only; real S3 ignores this line.
                  {"Effect": "Allow", "Action": "s3:ListObjectsV2", "Resource": "arn:aws:s3:::guarded"}]
        # (s3:* also covers the operation names moto >= 5.2.6 checks, e.g. s3:CreateMultipartUpload.)
        writer = [{"Effect": "Allow", "Action": "s3:*", "Resource": ["arn:aws:s3:::guarded", "arn:aws:s3:::guarded/*"]}]
        for user, statements in (("reader", reader), ("writer", writer)):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": statements}))
            k = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
        server.create_bucket("guarded")  # HeadBucket + CreateBucket: the last unauthenticated requests
        yield server, keys


def _use(monkeypatch, server, key_id=None, secret=None):
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
    for k, v in (("AWS_ACCESS_KEY_ID", key_id), ("AWS_SECRET_ACCESS_KEY", secret)):
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)


def test_check_credentials_and_permissions(iam_s3, monkeypatch):
    server, keys = iam_s3
    uri = "s3://guarded/study"
    _use(monkeypatch, server, *keys["writer"])
    assert check(uri).uri == uri
    _use(monkeypatch, server, *keys["reader"])
    assert check(uri, write=False).uri == uri
    with pytest.raises(StorageError) as e:
        check(uri)
    assert str(e.value).startswith(f"{uri}: permission denied to write (") and \
        "s3:PutObject on arn:aws:s3:::guarded/study/*" in str(e.value)
    _use(monkeypatch, server, "AKIAUNKNOWNUNKNOWN00", "whatever")
    with pytest.raises(StorageError, match=r"^s3://guarded/study: the access key id is not known to the store"):
        check(uri)
    _use(monkeypatch, server, keys["reader"][0], "not-the-secret")
    with pytest.raises(StorageError, match=r"^s3://guarded/study: the secret key does not match the access key id"):
        check(uri)
    _use(monkeypatch, server)  # no credentials at all (instance metadata is off in the test env)
    with pytest.raises(StorageError, match=r"^s3://guarded/study: no AWS credentials found"):
        check(uri)


# ---- measurement, hygiene -----------------------------------------------------------------------
def test_measure_upload_reports_seconds_and_ratios(s3_bucket, tmp_path):
    trial = _tree(tmp_path / "trial", {**FILES, "checkpoint.pt": os.urandom(2 << 20)})
    st = Storage.from_uri(s3_bucket + "/bench")
    out = measure_upload(st, trial, trial_wall_s=10.0, repeats=1)
    assert out["checkpoint_bytes"] == 2 << 20 and out["trial_dir_files"] == len(FILES)
    assert out["trial_dir_bytes"] == sum(len(b) for b in FILES.values()) - len(FILES["checkpoint.pt"]) + (2 << 20)
    for k in ("checkpoint_put", "trial_dir_upload", "checkpoint_commit"):
        assert out[f"{k}_s"] > 0 and out[f"{k}_ratio"] == pytest.approx(out[f"{k}_s"] / 10.0)
    assert st.list() == []  # it cleans up after itself
    with pytest.raises(ValueError, match="trial_wall_s=0"):
        measure_upload(st, trial, trial_wall_s=0)


def test_measure_on_its_own_server_restores_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # a caller's own setting survives
    before = dict(os.environ)
    trial = _tree(tmp_path / "trial", {"checkpoint.pt": b"c" * 1000, "metrics.jsonl": b"{}\n"})
    out = measure_upload_local_s3(trial, trial_wall_s=1.0, repeats=1)
    assert out["storage"] == "s3" and out["trial_dir_bytes"] == 1003 and out["checkpoint_commit_s"] > 0
    assert dict(os.environ) == before


def test_storage_imports_no_ray_polars_or_moto():
    code = ("import sys, json; import xtra.storage; "
            "print(json.dumps([m for m in ('ray', 'polars', 'moto', 'boto3', 'torch') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


# ---- conditional writes (the lease) ------------------------------------------------------------
def test_conditional_writes_on_the_local_s3_server(s3_bucket):
    from xtra.storage import conditional

    st = Storage.from_uri(s3_bucket + "/study")
    assert conditional.read(st, "study.lock") is None
    first = conditional.put(st, "study.lock", b"first")
    assert first and conditional.put(st, "study.lock", b"second") is None  # If-None-Match: * -- it exists
    data, etag = conditional.read(st, "study.lock")
    assert data == b"first" and etag == first  # a writer knows the version it wrote without reading it back
    third = conditional.put(st, "study.lock", b"third", etag=etag)  # If-Match the version read
    assert third and third != first
    assert conditional.put(st, "study.lock", b"fourth", etag=etag) is None  # that version is gone
    assert conditional.put(st, "study.lock", b"fifth", etag=third) and st.read_bytes("study.lock") == b"fifth"


def test_conditional_writes_are_unsupported_off_s3(tmp_path):
    from xtra.storage import conditional

    with pytest.raises(conditional.Unsupported):
        conditional.put(Storage.from_uri(tmp_path), "study.lock", b"x")


def test_shared_lease_two_drivers_at_once_exactly_one_wins(s3_bucket, tmp_path):
    """Eight drivers on "different machines" take the lease in S3 at the same moment: one holds it,
    seven are refused. settle_s is an hour: only the conditional write can decide this in time."""
    import threading

    from xtra.lease import StudyLock, StudyLocked

    st = Storage.from_uri(s3_bucket + "/study")
    start, won, refused, locks = threading.Barrier(8), [], [], []

    def driver(i: int) -> None:
        lock = StudyLock(tmp_path / f"copy{i}", "xtra study run", storage=st, settle_s=3600)
        start.wait()
        try:
            locks.append(lock.acquire())
            won.append(i)
        except StudyLocked as err:
            refused.append(str(err))

    threads = [threading.Thread(target=driver, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(won) == 1 and len(refused) == 7, (won, refused)
    assert all("in use by" in r or "at the same time" in r for r in refused)
    holder = json.loads(st.read_bytes("study.lock"))
    locks[0].release()
    assert holder["token"] == locks[0]._me["token"] and not st.exists("study.lock")


def test_shared_lease_falls_back_where_the_store_cannot_write_conditionally(tmp_path):
    from xtra.lease import StudyLock, StudyLocked

    st = Storage.from_uri(tmp_path / "store")  # a plain filesystem: no conditional PUT
    with StudyLock(tmp_path / "a", "xtra study run", storage=st, settle_s=0.01):
        assert st.is_file("study.lock")
        with pytest.raises(StudyLocked, match="in use by"):
            StudyLock(tmp_path / "b", "xtra study run", storage=st, settle_s=0.01).acquire()
    assert not st.exists("study.lock")


def _read_while_rewritten(st: Storage, rel: str, versions: list[bytes], read, reads: int = 300) -> set:
    """What `read()` returns over `reads` calls while a thread keeps writing `versions` to `rel` in turn."""
    import threading

    stop = threading.Event()

    def rewrite() -> None:
        while not stop.is_set():
            for data in versions:
                st.write_bytes(rel, data)

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    try:
        return {read() for _ in range(reads)}
    finally:
        stop.set()
        writer.join()


def test_a_manifest_replaced_while_it_is_read_never_reads_as_broken(s3_bucket, tmp_path):
    """On S3 a read is a size lookup then ranged GETs: a manifest replaced by a longer one between them
    reads as torn bytes. A reader polling a live study (status, a test's watcher) must get one of the
    committed manifests, never an "unreadable manifest" error; a manifest that is broken stays an error."""
    st = Storage.from_uri(s3_bucket + "/live")
    versions = []
    for n in (1, 40):  # two real commits of the same directory, manifests of very different lengths
        st.upload_dir(_tree(tmp_path / f"v{n}", {f"f{i:02d}.txt": b"x" * i for i in range(n)}), "d")
        versions.append(st.read_bytes("d/_manifest.json"))
    counts = _read_while_rewritten(st, "d/_manifest.json", versions, lambda: len(st.manifest("d").files))
    assert counts <= {1, 40}
    st.write_bytes("d/_manifest.json", versions[1][: len(versions[1]) // 2])  # torn for good: still refused
    with pytest.raises(StorageError, match="d/_manifest.json: unreadable manifest"):
        st.manifest("d")


def test_a_json_file_replaced_while_it_is_read_never_reads_as_garbage(s3_bucket):
    """The same torn read, one level down (`Storage.read_parsed`): the shared lease (study.lock) is
    renewed while other drivers and `status` read it, and a torn read there looked like no lease at all."""
    st = Storage.from_uri(s3_bucket + "/lease")
    versions = [json.dumps({"pid": 1, "note": "x" * n}).encode() for n in (1, 4000)]
    st.write_bytes("study.lock", versions[0])
    lengths = _read_while_rewritten(st, "study.lock", versions, lambda: len(st.read_json("study.lock")["note"]))
    assert lengths <= {1, 4000}
    st.write_bytes("study.lock", versions[1][:100])  # torn for good: still the parser's error
    with pytest.raises(json.JSONDecodeError):
        st.read_json("study.lock")
