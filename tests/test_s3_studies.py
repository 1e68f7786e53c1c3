"""Studies whose storage is an object store: a real S3 protocol server (moto) on 127.0.0.1, real Ray.

Nothing of a trial reaches the driver except through S3: on a two-node Ray cluster whose nodes keep
their trials in scratch directories of their own, the study completes and its report shows every
trial's curves and pictures; a driver killed mid-run, its local study directory deleted, resumes
from the S3 URI alone and matches the uninterrupted run; status, report and pull work from a
machine that never saw the study; a bad bucket or endpoint is one line before any trial starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from drivers import kill_when
from raycluster import stop_cluster
from typer.testing import CliRunner

from xtra import lease
from xtra import studydir as st
from xtra.cli.report import app as report_app
from xtra.cli.study import app as study_app
from xtra.storage import Storage
from xtra.studies.load import load_study
from xtra.studies.ray import token_auth_available

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
METRICS = ("samples_seen", "train_loss", "val_loss", "linear_top1", "attentive_top1", "linear_best_lr",
           "attentive_best_lr")
TIMEOUT = 300

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XTRA_") and k != "RAY_ADDRESS"}
    env.update(extra)
    return env


def xtra(*args: str, env: dict[str, str], timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xtra.cli.main", "study", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    from xtra.testing.s3server import free_port

    return free_port()


def attempts(stor: Storage, h: str) -> list[dict]:
    try:
        text = stor.read_text(f"trials/{h}/attempts.jsonl")
    except FileNotFoundError:
        return []
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def starts(stor: Storage, h: str) -> list[dict]:
    return [a for a in attempts(stor, h) if a["event"] == "start"]


def stored_results(stor: Storage, tmp: Path) -> pl.DataFrame:
    path = tmp / f"results-{time.monotonic_ns()}.parquet"
    path.write_bytes(stor.read_bytes("results.parquet"))
    return pl.read_parquet(path).sort("config_hash")


@pytest.fixture(scope="module")
def hashes() -> dict[int, str]:
    return {s.params["model.block_size"]: s.config_hash for s in load_study("block-size", preset="smoke").expand()}


@pytest.fixture(scope="module")
def cluster_study(s3_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The smoke block-size study (2 trials) on a two-node Ray cluster on this machine, 1 CPU per node,
    each node with its own scratch root, storage in S3; the reference run for the other tests, which
    may use the cluster (``address``) until the module's tests are done."""
    bucket = s3_server.create_bucket("xtra-cluster")
    tmp = tmp_path_factory.mktemp("cluster")
    scratch = {"a": tmp / "scratch-a", "b": tmp / "scratch-b"}
    temp_dir = tempfile.mkdtemp(prefix="xs", dir="/tmp")  # short: Ray's socket paths live under it
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
              "--object-store-memory=200000000"]

    def node_ports() -> list[str]:
        return [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
                f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
                f"--object-manager-port={_free_port()}", f"--node-manager-port={_free_port()}"]

    try:
        for name, args in (("a", ["--head", f"--port={port}", "--include-dashboard=false"]),
                           ("b", [f"--address=127.0.0.1:{port}"])):
            scratch[name].mkdir()
            env = _env(XTRA_SCRATCH=str(scratch[name]))
            if name == "b" and token_auth_available():  # the head turned token authentication on by itself
                env["RAY_AUTH_MODE"] = "token"
            proc = subprocess.run([ray_bin, "start", *args, *common, *node_ports()], capture_output=True, text=True,
                                  timeout=120, env=env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        out = tmp / "driver" / "ref"
        proc = subprocess.run([sys.executable, "-m", "xtra.cli.main", "study", "run", "block-size", "--preset", "smoke",
                               "--out", str(out), "--storage", f"{bucket}/studies", "--address", f"127.0.0.1:{port}"],
                              cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield {"uri": f"{bucket}/studies/ref", "out": out, "scratch": scratch, "stdout": proc.stdout, "tmp": tmp,
               "address": f"127.0.0.1:{port}"}
    finally:
        stop_cluster(temp_dir)


def test_cluster_without_shared_filesystem(cluster_study: dict, hashes: dict[int, str]) -> None:
    stor = Storage.from_uri(cluster_study["uri"])
    scratch = cluster_study["scratch"]
    assert "used the Ray cluster at " in cluster_study["stdout"] and "(2 CPUs" in cluster_study["stdout"]
    # each trial ran once, in a scratch directory of the node that ran it, never in the driver's directory
    ran_in = {}
    for h in hashes.values():
        (start,) = starts(stor, h)
        ran_in[h] = Path(start["dir"])
        assert any(ran_in[h].is_relative_to(root) for root in scratch.values()), ran_in[h]
        assert not ran_in[h].exists(), "a finished trial's scratch copy is left behind"
    nodes = {next(n for n, root in scratch.items() if p.is_relative_to(root)) for p in ran_in.values()}
    assert nodes == {"a", "b"}, f"both trials ran on one node: {ran_in}"
    # results, curves, probes and the report are in storage, complete
    df = stored_results(stor, cluster_study["tmp"])
    assert set(df["config_hash"]) == set(hashes.values()) and set(df["status"]) == {"finished"}
    assert (df["linear_top1"] > 0).all() and (df["samples_seen"] == 512).all()
    for name in ("curves.parquet", "probes.parquet"):
        local = cluster_study["tmp"] / name
        local.write_bytes(stor.read_bytes(name))
        frame = pl.read_parquet(local)
        assert set(frame["config_hash"]) == set(hashes.values()), name
    assert pl.read_parquet(cluster_study["tmp"] / "curves.parquet")["samples_seen"].max() == 512
    page = stor.read_member("report", "index.html").decode()
    assert 'data-figure="loss-curves"' in page and 'data-figure="predictions"' in page
    assert "k=1" in page and "k=2" in page and "Prediction pictures failed" not in page
    # the driver's copy has no checkpoints but the two the pictures drew
    copy = cluster_study["out"]
    assert sorted(p.parent.name for p in copy.glob("trials/*/checkpoint.pt")) == sorted(hashes.values())
    assert not list(copy.glob("trials/*/checkpoints/*"))


def test_status_report_and_pull_from_a_machine_that_never_saw_it(cluster_study: dict, hashes: dict[int, str],
                                                                  tmp_path: Path, monkeypatch) -> None:
    uri = cluster_study["uri"]
    monkeypatch.setenv("XTRA_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(study_app, ["status", uri])
    assert res.exit_code == 0, res.output
    assert "2 finished · 0 running · 0 interrupted · 0 failed · 0 pending" in res.output
    res = CliRunner().invoke(report_app, ["build", uri, "--n-boot", "0"])
    assert res.exit_code == 0, res.output
    index = Path(res.output.split("report: ", 1)[1].split()[0])
    assert index.is_relative_to(tmp_path / "cache") and f"report in storage: {uri}/report/index.html" in res.output
    page = index.read_text()
    assert 'data-figure="predictions"' in page and "k=1" in page and "k=2" in page
    res = CliRunner().invoke(study_app, ["pull", uri, str(tmp_path / "notebook")])
    assert res.exit_code == 0 and " file(s) copied (" in res.output, res.output
    import xtra

    df = xtra.load_results(tmp_path / "notebook").sort("config_hash")
    ref = stored_results(Storage.from_uri(uri), tmp_path)
    assert df.select(METRICS).equals(ref.select(METRICS))
    assert not list((tmp_path / "notebook").glob("trials/*/checkpoint.pt"))
    again = CliRunner().invoke(study_app, ["pull", uri, str(tmp_path / "notebook")])
    assert again.exit_code == 0 and ": 0 file(s) copied" in again.output, again.output


def test_a_second_machine_is_refused_while_a_driver_holds_the_lease(cluster_study: dict, hashes: dict[int, str],
                                                                    tmp_path: Path, monkeypatch) -> None:
    """A driver on "machine A" holds the study (its lease is in S3); "machine B", with its own empty copy,
    is refused by resume in one line before any trial starts, and status there names the holder."""
    uri = cluster_study["uri"]
    monkeypatch.setenv("XTRA_CACHE", str(tmp_path / "cache-b"))
    holder = lease.StudyLock(tmp_path / "machine-a", "xtra study resume", storage=Storage.from_uri(uri)).acquire()
    try:
        res = CliRunner().invoke(study_app, ["resume", uri])
        assert res.exit_code != 0
        line = res.output.strip()
        assert "\n" not in line and f"{uri}/study.lock: in use by pid {os.getpid()}" in line, res.output
        res = CliRunner().invoke(study_app, ["status", uri])
        assert res.exit_code == 0 and f"running: pid {os.getpid()}" in res.output, res.output
    finally:
        holder.release()
    assert not Storage.from_uri(uri).is_file(lease.LOCK)
    assert all(len(starts(Storage.from_uri(uri), h)) == 1 for h in hashes.values())  # nothing reran


def test_kill_driver_delete_copy_resume_from_uri(cluster_study: dict, hashes: dict[int, str], s3_server,
                                                 tmp_path: Path) -> None:
    bucket = s3_server.create_bucket("xtra-killed")
    stor = Storage.from_uri(f"{bucket}/studies/killed")
    out = tmp_path / "first" / "killed"
    # On the module's cluster (its nodes keep their own scratch roots; starting no new Ray saves time)
    proc = subprocess.Popen([sys.executable, "-m", "xtra.cli.main", "study", "run", "block-size", "--preset", "smoke",
                             "--out", str(out), "--storage", f"{bucket}/studies", "--no-report", "--logger", "none",
                             "--max-concurrent", "1", "--address", cluster_study["address"]], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # While it runs, a driver on "another machine" (its own copy, the study's URI) is refused by the
        # lease in storage, in one line, before Ray starts.
        deadline = time.monotonic() + 60
        while not (stor.is_file(lease.LOCK) and stor.is_file(st.STUDY_TOML)):
            assert proc.poll() is None and time.monotonic() < deadline, "the first driver never took the lease"
            time.sleep(0.05)
        res = CliRunner().invoke(study_app, ["resume", stor.uri, "--copy", str(tmp_path / "elsewhere")])
        assert res.exit_code == 2 and f"in use by pid {proc.pid} on " in " ".join(res.output.split()), res.output

        # SIGKILL once one trial is finished in storage and the other has a committed checkpoint
        finished = unfinished = None

        def pair_in_storage() -> bool:
            nonlocal finished, unfinished
            for h in hashes.values():
                m = stor.manifest(f"trials/{h}")
                if m is None:
                    continue
                if "trial.json" in m.files:
                    finished = h
                elif "tune_checkpoint.json" in m.files and finished is not None and h != finished and \
                        json.loads(stor.read_member(f"trials/{h}", "tune_checkpoint.json"))["samples_seen"] < 512:
                    unfinished = h  # mid-pretraining: a trial past its last checkpoint is probing, nearly done
            return finished is not None and unfinished is not None

        kill_when(proc, pair_in_storage, timeout=240, what="a finished + checkpointed pair in storage", every=0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    worker = starts(stor, unfinished)[-1]["pid"]
    deadline = time.monotonic() + 60
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stor.manifest(f"trials/{unfinished}") is not None
    assert "trial.json" not in stor.manifest(f"trials/{unfinished}").files
    ckpt = json.loads(stor.read_member(f"trials/{unfinished}", "tune_checkpoint.json"))["samples_seen"]
    assert 0 < ckpt < 512
    # `xtra study status` and the report read the killed study the same way (one definition of status)
    res = CliRunner().invoke(study_app, ["status", str(out)])
    assert res.exit_code == 0 and "1 finished · 0 running · 1 interrupted · 0 failed · 0 pending" in res.output, \
        res.output
    from xtra.reports.collect import collect_results as collect

    seen = {r["config_hash"]: r["status"] for r in collect(out).results.to_dicts()}
    assert seen == {finished: "finished", unfinished: "interrupted"}, seen
    # as if on a new machine: no local study directory, no scratch copy of any trial on any node
    shutil.rmtree(tmp_path / "first")
    for root in cluster_study["scratch"].values():
        for run in root.glob("*/trials/*"):
            shutil.rmtree(run)
    copy = tmp_path / "second"
    res = xtra("resume", stor.uri, "--copy", str(copy), "--no-report", "--address", cluster_study["address"],
               env=_env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert "took over the lock" in res.stdout  # the killed driver's lease, in storage
    assert len(starts(stor, finished)) == 1, "a finished trial was rerun"
    again = starts(stor, unfinished)
    assert len(again) == 2 and again[1]["checkpoint_samples"] >= ckpt > 0
    assert "resumed from" in stor.read_member(f"trials/{unfinished}", "log.txt").decode()
    df = stored_results(stor, tmp_path)
    ref = stored_results(Storage.from_uri(cluster_study["uri"]), tmp_path)
    assert set(df["status"]) == {"finished"}
    assert df.select("config_hash", *METRICS).equals(ref.select("config_hash", *METRICS))  # bitwise
    local = pl.read_parquet(copy / "results.parquet").sort("config_hash")  # as stored_results: row order is no result
    assert local.select(METRICS).equals(df.select(METRICS))
    runs = json.loads(stor.read_text("runs.json"))
    assert [r["state"] for r in runs] == ["interrupted", "finished"]


def test_bad_storage_is_one_line_before_any_trial(s3_bucket: str, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "never"
    res = CliRunner().invoke(study_app, ["run", "block-size", "--preset", "smoke", "--out", str(out),
                                         "--storage", "s3://no-such-bucket-xtra/p"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "s3://no-such-bucket-xtra/p/never: bucket 'no-such-bucket-xtra' does not exist" in lines[0]
    assert not out.exists()
    res = CliRunner().invoke(study_app, ["resume", f"{s3_bucket}/nothing"])
    assert res.exit_code == 2 and f"{s3_bucket}/nothing: not a study (no study.toml there" in res.output, res.output
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    res = CliRunner().invoke(report_app, ["build", f"{s3_bucket}/x"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and f"{s3_bucket}/x: cannot reach endpoint" in lines[0], res.output


def test_trial_sync_commits_own_files_and_writes_plain_ones(s3_bucket: str, tmp_path: Path, monkeypatch) -> None:
    """What a trial's Ray actor does with its directory (no Ray needed): on one node it commits its
    own files and writes the PLAIN ones whole; another node downloads all of them; a wsd branch gets
    its own copy of the trunk's directory, never the trunk's scratch directory."""
    from xtra import trialdir as td
    from xtra.studies.ray.trialfiles import TrialSync

    monkeypatch.setenv("XTRA_SCRATCH", str(tmp_path / "node-a"))
    a = TrialSync(f"{s3_bucket}/s/study", "h1")
    assert a.remote and a.run_dir.is_relative_to(tmp_path / "node-a")
    a.download()  # nothing stored yet: an empty directory
    files = {td.CONFIG: b"{}", td.CHECKPOINT: b"weights", td.PARAMS: b'{"p": 1}', td.ATTEMPTS: b'{"event": "start"}\n',
             ".tune-checkpoint-x/checkpoint.pt": b"temp", "checkpoints/samples-64.pt": b"kept"}
    for name, data in files.items():
        (a.run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (a.run_dir / name).write_bytes(data)
    a.upload()
    a.put(td.PARAMS, td.ATTEMPTS, td.STATUS)
    m = a.storage.manifest(a.rel)
    assert sorted(m.files) == sorted([td.CONFIG, td.CHECKPOINT, "checkpoints/samples-64.pt"])
    assert sorted(a.storage.plain_files(a.rel)) == sorted([td.PARAMS, td.ATTEMPTS])
    monkeypatch.setenv("XTRA_SCRATCH", str(tmp_path / "node-b"))
    b = TrialSync(f"{s3_bucket}/s/study", "h1")
    b.download()
    got = {p.relative_to(b.run_dir).as_posix(): p.read_bytes() for p in b.run_dir.rglob("*") if p.is_file()}
    assert got == {k: v for k, v in files.items() if not k.startswith(".")}
    branch = TrialSync(f"{s3_bucket}/s/study", "h2")
    job = branch.trunk(td.WsdJob(td.BRANCH, trunk_dir="/driver/only/trials/h1", start=64), lambda e: None)
    copy = Path(job.trunk_dir)
    assert copy.name == "h1" and copy != b.run_dir and (copy / "checkpoints" / "samples-64.pt").read_bytes() == b"kept"
    assert not (copy / td.CHECKPOINT).exists()  # the trunk's latest checkpoint is not the branch's business
    branch.cleanup()
    assert not copy.exists()
    local = TrialSync(tmp_path / "shared" / "study", "h3")  # a shared filesystem: in place, nothing moves
    assert not local.remote and local.run_dir == (tmp_path / "shared" / "study" / "trials" / "h3").resolve()
