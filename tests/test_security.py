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
    from xtra.studies.ray.trialfiles import TrialSync

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


# ---- secrets (finding 4) -------------------------------------------------------------------------
DUMMY = {"AWS_ACCESS_KEY_ID": "AKIADUMMYKEY0000XTRA", "AWS_SECRET_ACCESS_KEY": "dummy-secret-9f8e7d6c5b4a",
         "AWS_SESSION_TOKEN": "dummy-session-token-1a2b3c", "WANDB_API_KEY": "dummy-wandb-key-5e6f7a8b",
         "MLFLOW_TRACKING_PASSWORD": "dummy-mlflow-pass-0c1d2e"}


def test_worker_env_sends_settings_never_secrets(monkeypatch):
    from xtra.studies.ray.session import _worker_env, secrets_note

    for k, v in DUMMY.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("XTRA_ALLOW_PIPE", "1")
    monkeypatch.setenv("XTRA_SCRATCH", "/driver/only")
    env, withheld = _worker_env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and env["XTRA_ALLOW_PIPE"] == "1"
    assert not set(DUMMY) & set(env) and "XTRA_SCRATCH" not in env
    assert set(DUMMY) <= set(withheld)
    line = secrets_note(withheld)
    assert "\n" not in line and "Ray logs runtime-env variables" in line and "instance role" in line


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST is not installed")
def test_no_secret_reaches_the_study_dir_or_rays_logs(tmp_path):
    """A study on a cluster started elsewhere (`--address`), the driver holding dummy keys: no file
    under the study directory, nor under the cluster's own logs, contains one of them."""
    import subprocess
    import sys
    import tempfile

    from raycluster import stop_cluster

    from xtra.testing.s3server import free_port

    root = Path(__file__).resolve().parents[1]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("XTRA_", "AWS_", "WANDB_", "MLFLOW_"))
            and k != "RAY_ADDRESS"}
    temp_dir = tempfile.mkdtemp(prefix="xk", dir="/tmp")
    port = free_port()
    try:
        proc = subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
                               "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                               f"--temp-dir={temp_dir}", "--disable-usage-stats", "--object-store-memory=200000000"],
                              env=base, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = tmp_path / "study"
        res = subprocess.run([sys.executable, "-m", "xtra.cli.main", "study", "run", "block-size", "--preset", "smoke",
                              "--set", "axes.model.block_size=[1]", "--out", str(out), "--no-report",
                              "--logger", "none", "--address", f"127.0.0.1:{port}"],
                             cwd=root, env={**base, **DUMMY}, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "not sent to the Ray workers" in res.stderr and "AWS_SECRET_ACCESS_KEY" in res.stderr
        leaks = [str(p) for where in (out, Path(temp_dir)) for p in where.rglob("*")
                 if p.is_file() and not p.is_symlink() and any(v.encode() in _bytes(p) for v in DUMMY.values())]
        assert leaks == []
    finally:
        stop_cluster(temp_dir)


def _bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError:
        return b""


# ---- commands from data names (findings 2 and 3) -------------------------------------------------
def test_a_study_file_with_a_pipe_source_is_refused_without_opt_in(tmp_path, monkeypatch):
    """`xtra study run` of a study file someone sent: its wds:pipe: command never runs unasked."""
    from typer.testing import CliRunner

    from xtra.cli.main import app

    monkeypatch.delenv("XTRA_ALLOW_PIPE", raising=False)
    marker = tmp_path / "ran"
    study = tmp_path / "sent.toml"
    study.write_text(f'name = "sent"\nsize = "tiny"\n[base]\ndata.name = "wds:pipe:touch {marker}"\n'
                     '[axes]\n"model.block_size" = [1]\n')
    res = CliRunner().invoke(app, ["study", "run", str(study), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    line = " ".join(res.output.split())
    assert "runs a shell command" in line and "--allow-commands" in line and "XTRA_ALLOW_PIPE=1" in line
    assert not marker.exists()
    shown = CliRunner().invoke(app, ["study", "show", str(study)])
    assert shown.exit_code == 0 and "is a shell command" in shown.output and not marker.exists()


def test_the_opt_in_lets_the_command_run(tmp_path, monkeypatch):
    from xtra.data.collection import BadCollection, _pipe_shards

    marker = tmp_path / "ran"
    monkeypatch.delenv("XTRA_ALLOW_PIPE", raising=False)
    monkeypatch.setenv("XTRA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BadCollection, match="XTRA_ALLOW_PIPE=1"):
        _pipe_shards(f"pipe:touch {marker}")
    assert not marker.exists()
    monkeypatch.setenv("XTRA_ALLOW_PIPE", "1")
    with pytest.raises(BadCollection, match="not a tar shard"):  # it ran (and wrote no shard)
        _pipe_shards(f"pipe:touch {marker}")
    assert marker.exists()


def _crafted_checkpoint(run_dir: Path, command: str) -> None:
    """A checkpoint as an attacker with write access to a shared study dir writes it: a plain dict
    (loads with weights_only=True) whose data.name is a command."""
    import dataclasses

    import torch

    from xtra.config import DataConfig, model_config
    from xtra.model import XTRA

    model = model_config("tiny")
    data = dataclasses.asdict(DataConfig())
    data["name"] = command  # DataConfig would accept it: a wds: name
    torch.save({"format": 1, "model": XTRA(model).state_dict(),
                "config": {"model": dataclasses.asdict(model), "data": data}}, run_dir / "checkpoint.pt")


@pytest.mark.slow
def test_report_build_never_runs_a_command_from_a_checkpoint(tmp_path, monkeypatch):
    import torch
    from typer.testing import CliRunner

    from xtra.checkpoint import FORMAT
    from xtra.cli.main import app
    from xtra.reports.calibration.synthetic import make_study

    monkeypatch.setenv("XTRA_ALLOW_PIPE", "1")  # even opted in (for a run), a report runs no data source
    marker = tmp_path / "pwned"
    root = make_study(tmp_path / "study", block_sizes=(1, 2), layout="both")
    run_dir = sorted(p.parent for p in root.glob("trials/*/trial.json"))[0]
    _crafted_checkpoint(run_dir, f"wds:pipe:touch {marker}")
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)  # what an attacker can write
    state["format"] = FORMAT
    torch.save(state, run_dir / "checkpoint.pt")
    res = CliRunner().invoke(app, ["report", "build", str(root), "--n-boot", "0"])
    assert res.exit_code == 0, res.output
    assert not marker.exists()
    page = (root / "report" / "index.html").read_text()
    assert "is a shell command" in page and "pictures never run a data source" in page


# ---- durable searches (finding 6) -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST is not installed")
def test_a_killed_optuna_driver_on_s3_resumes_with_no_finished_trial_lost(s3_server, tmp_path):
    """The driver of an Optuna search on S3 is SIGKILLed once a trial has finished and the next has
    started (the head node preempted): optuna.db in storage already holds the finished trial, and a
    resume on another machine (its own copy) completes the search without rerunning it."""
    import subprocess
    import sys

    import optuna
    from drivers import kill_when

    bucket = s3_server.create_bucket("xtra-optuna-kill")
    stor = Storage.from_uri(f"{bucket}/studies/lr-search-smoke")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XTRA_") and k != "RAY_ADDRESS"}

    def xtra(*args: str) -> list[str]:
        return [sys.executable, "-m", "xtra.cli.main", "study", *args, "--no-report"]

    proc = subprocess.Popen(xtra("run", "lr-search", "--preset", "smoke", "--out", str(tmp_path / "first" /
                                 "lr-search-smoke"), "--storage", f"{bucket}/studies", "--logger", "none",
                                 "--max-concurrent", "1"), cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def finished() -> list[str]:
        out = []
        for h in stor.subdirs("trials") if stor.exists("trials") else []:
            m = stor.manifest(f"trials/{h}")
            if m is not None and "trial.json" in m.files:
                out.append(h)
        return out

    seen: dict[str, str] = {}

    def one_done_next_started() -> bool:
        done = finished()
        if len(done) == 1 and len(stor.subdirs("trials")) == 2:
            seen["done"] = done[0]
            return True
        return False

    kill_when(proc, one_done_next_started, timeout=300, what="one finished trial and the next started", every=0.2)
    # the finished one as the driver died: the other trial's worker may still finish and commit after it
    done = seen["done"]
    db = tmp_path / "stored-optuna.db"
    db.write_bytes(stor.read_bytes("optuna.db"))  # absent before: pushed only in the runner's finally
    kept = optuna.load_study(study_name="lr-search", storage=f"sqlite:///{db}")
    assert len(kept.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 1
    [trial] = kept.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    done_json = stor.read_member(f"trials/{done}", "trial.json")
    res = subprocess.run(xtra("resume", stor.uri, "--copy", str(tmp_path / "second")), cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    # The resumed search starts from the stored state: the finished trial is still COMPLETE there, and
    # its results were not produced again.
    db.write_bytes(stor.read_bytes("optuna.db"))
    after = optuna.load_study(study_name="lr-search", storage=f"sqlite:///{db}")
    assert trial.params in [t.params for t in after.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]
    assert stor.read_member(f"trials/{done}", "trial.json") == done_json


# ---- archives (finding 7: member sizes, unsafe extraction) ------------------------------------------
def _shard(path: Path, members: dict[str, bytes]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("member", ["0.cls", "0.name"])
def test_shard_label_and_name_members_are_capped(tmp_path, member):
    from xtra.data.collection import BadCollection, index_shard

    shard = _shard(tmp_path / "s.tar", {"0.png": b"\x89PNG", member: b"7" * (1 << 20)})
    with pytest.raises(BadCollection, match=rf"member '{member}' is 1048576 bytes \(allowed: at most") as err:
        index_shard(str(shard), with_names=True)
    assert "\n" not in str(err.value)
    ok = _shard(tmp_path / "ok.tar", {"0.png": b"\x89PNG", "0.cls": b"3\n", "0.name": b"cat"})
    assert [r[4:] for r in index_shard(str(ok), with_names=True)] == [(3, "cat")]


def test_data_get_refuses_to_extract_without_the_data_filter(tmp_path, monkeypatch):
    """On a Python without tarfile's 'data' filter (< 3.11.4), a downloaded archive is not extracted
    at all (it could write outside the data directory), instead of an unfiltered extractall."""
    import io
    import tarfile

    from xtra.data import DownloadError, extract_archive

    tarball = tmp_path / "evil.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    into = tmp_path / "a" / "data"
    into.mkdir(parents=True)
    with pytest.raises(DownloadError, match="cannot extract"):  # with the filter: the member is refused
        extract_archive(tarball, into)
    monkeypatch.delattr(tarfile, "data_filter")
    with pytest.raises(DownloadError, match=r"not extracted: Python .* no safe tar extraction"):
        extract_archive(tarball, into)
    assert not (tmp_path / "a" / "escaped.txt").exists()


# ---- bounds before work (finding 5) ---------------------------------------------------------------
def _show(*args: str):
    from typer.testing import CliRunner

    from xtra.cli.main import app

    return CliRunner().invoke(app, ["study", "show", *args])


def _one_line_error_or_ok(res) -> None:
    assert res.exit_code in (0, 2), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if res.exit_code == 2:
        assert res.output.startswith("error:") and len(res.output.strip().splitlines()) == 1, res.output


def test_a_huge_width_is_one_line_at_once_and_integral_floats_are_integers():
    res = _show("block-size", "-p", "smoke", "--set", "model.width=1000000000")  # hung past 60 s before
    _one_line_error_or_ok(res)
    assert res.exit_code == 2 and "model.width=1000000000 is out of range (allowed: 1 to 65536)" in res.output
    res = _show("block-size", "-p", "smoke", "--set", "pretrain.samples=1e6")  # was "wrong type"
    assert res.exit_code == 0 and "1,000,000" in res.output, res.output
    res = _show("block-size", "-p", "smoke", "--set", "pretrain.samples=1.5e6")
    _one_line_error_or_ok(res)
    assert res.exit_code == 0  # 1.5e6 is the integer 1,500,000 too
    res = _show("block-size", "-p", "smoke", "--set", "pretrain.samples=1000.5")
    assert res.exit_code == 2 and "wrong type" in res.output


def test_a_huge_budget_needs_yes(tmp_path):
    from typer.testing import CliRunner

    from xtra.cli.main import app

    res = CliRunner().invoke(app, ["study", "run", "block-size", "-p", "smoke", "--set", "pretrain.samples=1e15",
                                   "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "GPU-hours" in res.output and "--yes" in res.output, res.output
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_a_model_larger_than_memory_is_refused_before_allocation():
    from xtra.studies.load import load_study
    from xtra.studies.runner import check_memory
    from xtra.studydir import StudyError

    big = load_study("block-size", preset="smoke", sets={"model.width": 16384, "model.depth": 256,
                                                          "model.num_heads": 16, "pretrain.batch_size": 65536})
    with pytest.raises(StudyError, match=r"needs at least [\d,.]+ GiB \(a lower bound\), more than the") as err:
        check_memory(big)
    assert "\n" not in str(err.value)
    check_memory(load_study("block-size", preset="smoke"))  # a real study fits


# Hypothesis: every --set value and every study file ends, within 5 s, in a study `show` can print or a
# one-line error; never a traceback, never a hang.
def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(v), repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


def _values():
    from hypothesis import strategies as hs

    scalar = hs.one_of(hs.integers(-10**20, 10**20), hs.sampled_from([0, 1, 2, 3, 4, 7, 8, 16, 64, 10**9, -1]),
                       hs.floats(allow_nan=True, allow_infinity=True), hs.sampled_from([1e6, 1e9, 1e18, 0.5]),
                       hs.booleans(), hs.text(max_size=12), hs.sampled_from(["wds:pipe:touch /tmp/x", "../../x"]))
    return hs.one_of(scalar, hs.lists(scalar, max_size=4))


def test_property_set_values_end_in_a_study_or_one_line():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as hs

    from xtra.overrides import valid_keys

    keys = hs.one_of(hs.sampled_from(valid_keys()), hs.sampled_from(["axes.model.block_size", "seeds",
                                                                      "search.num_samples", "nope.key"]))

    @settings(max_examples=60, deadline=5000, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(hs.lists(hs.tuples(keys, _values()), min_size=1, max_size=3))
    def check(pairs):
        args = [a for k, v in pairs for a in ("--set", f"{k}={_toml(v)}")]
        _one_line_error_or_ok(_show("block-size", "-p", "smoke", *args))

    check()


def test_property_study_files_end_in_a_study_or_one_line(tmp_path):
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as hs

    from xtra.overrides import valid_keys

    key = hs.sampled_from([k for k in valid_keys() if k.startswith(("model.", "pretrain.", "data.", "probe."))])

    @settings(max_examples=40, deadline=5000, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(hs.sampled_from(["tiny", "cpu-s", "nope"]), hs.dictionaries(key, _values(), max_size=3),
           key, hs.lists(_values(), min_size=1, max_size=3), hs.one_of(hs.integers(-3, 10**6), hs.just(1e18)))
    def check(size, base, axis, axis_values, seeds):
        text = (f'name = "prop"\nsize = "{size}"\nseeds = {_toml(seeds)}\n[base]\n'
                + "".join(f'"{k}" = {_toml(v)}\n' for k, v in base.items())
                + f'[axes]\n"{axis}" = {_toml(axis_values if isinstance(axis_values, list) else [axis_values])}\n')
        with tempfile.NamedTemporaryFile("w", suffix=".toml", dir=tmp_path, delete=False) as f:
            f.write(text)
        _one_line_error_or_ok(_show(f.name))

    check()
