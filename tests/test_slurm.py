"""Studies on Slurm: the job script and `xtra study submit`, against a real Slurm cluster the tests start
(tests/slurmcluster.py: munged, slurmctld and slurmd on this machine), real Ray, real Fashion-MNIST.

Fast: --slurm parsing, the shipped script is the rendered one, a dry-run submit, the driver's stop
signals. Slow (real Slurm; three jobs queued at once, one CPU each, two running side by side): the smoke
study submitted by `xtra study submit` completes and its report builds (the uninterrupted reference);
`scontrol requeue` after a trial finished resumes, reruns nothing finished and gives the reference's
results; a job whose 2-minute --time is shorter than its study is warned by Slurm (SIGUSR1), checkpoints
the running trial where it is, stops, requeues itself and completes in a second allocation from that
checkpoint, with its storage in S3 (the local server) and each allocation in a fresh scratch directory.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
from slurmcluster import slurm_cluster  # noqa: F401 - the session's Slurm cluster fixture
from typer.testing import CliRunner

from xtra.cli.study import app as study_app
from xtra.storage import Storage
from xtra.studies import slurm

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
SCIENCE = ("config_hash", "status", "samples_seen", "train_loss", "val_loss", "linear_top1", "attentive_top1")
# The smoke preset's two trials (k = 1, 2), long enough that a job can be interrupted in the middle.
SETS = ["--set", "pretrain.samples=2048", "--set", "pretrain.checkpoint_every=512"]
JOB_TIMEOUT = 240
LONG_SAMPLES = 180_224  # ~80 s of pretraining (tiny, one CPU, ~2,200 images/s): longer than the first allocation



def on_slurm(test):  # noqa: ANN001, ANN201
    """Marks a test that runs jobs on the session's Slurm cluster (slow; the fast tier skips it)."""
    for mark in (pytest.mark.slow, pytest.mark.slurm,
                 pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")):
        test = mark(test)
    return test


# ---------------------------------------------------------------------------------------------
# Without Slurm


def test_slurm_options_parse_and_bad_keys_are_one_line() -> None:
    assert slurm.parse_slurm("partition=gpu, nodes=2,gpus-per-node=8,time=24:00:00") == {
        "partition": "gpu", "nodes": "2", "gpus-per-node": "8", "time": "24:00:00"}
    assert slurm.parse_slurm(None) == {}
    for text, words in (("gpus=8", "--slurm gpus: unknown key (allowed: partition"),
                        ("nodes=0", "--slurm nodes=0: expected a whole number >= 1"),
                        ("time=1h", "--slurm time=1h: expected minutes"),
                        ("partition", "--slurm 'partition': expected KEY=VALUE"),
                        ("nodes=1,nodes=2", "--slurm nodes: given twice")):
        with pytest.raises(ValueError, match="^" + words.replace("(", r"\(")) as err:
            slurm.parse_slurm(text)
        assert "\n" not in str(err.value)


def test_shipped_script_is_the_rendered_one_and_parses() -> None:
    shipped = ROOT / "scripts" / "slurm" / "study.sbatch"
    assert shipped.read_text() == slurm.render(), "regenerate: python -c 'from xtra.studies.slurm import render; ...'"
    assert subprocess.run(["bash", "-n", str(shipped)]).returncode == 0
    text = shipped.read_text()
    for line in ("#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "#SBATCH --open-mode=append"):
        assert line in text.splitlines()
    res = subprocess.run(["bash", str(shipped)], capture_output=True, text=True,
                         env={**os.environ, "SLURM_JOB_ID": "1"})
    assert res.returncode == 2 and res.stderr.strip().startswith("usage: sbatch study.sbatch STUDY --out DIR")


def test_submit_dry_run_writes_the_filled_in_script(tmp_path: Path) -> None:
    out = tmp_path / "bs"
    res = CliRunner().invoke(study_app, ["submit", "block-size", "--preset", "smoke", "--out", str(out), "--dry-run",
                                         "--slurm", "partition=gpu,nodes=2,gpus-per-node=8,time=1-00:00,signal=120",
                                         "--max-concurrent", "1", *SETS])
    assert res.exit_code == 0, res.output
    text = (out / "slurm" / "study.sbatch").read_text()
    lines = text.splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --time=1-00:00",
                 "#SBATCH --signal=B:USR1@120", f"#SBATCH --output={out.resolve()}/slurm/slurm-%j.out"):
        assert line in lines
    assert f"set -- block-size --out {out.resolve()} --preset smoke --set pretrain.samples=2048" in text
    assert "--max-concurrent 1" in text and sys.executable in text
    assert not (out / "slurm" / "jobs.json").exists()  # not submitted
    bad = CliRunner().invoke(study_app, ["submit", "block-size", "--out", str(tmp_path / "x"), "--slurm", "gpu=1"])
    assert bad.exit_code == 2 and "--slurm gpu: unknown key" in bad.output
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_stop_signals_are_recorded_and_handlers_restored() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    with slurm.stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)  # outside the Tune run: recorded, nothing interrupted
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == "SIGUSR1"
        with stop.fitting():  # Ray still starting: the signal stops that, and the stop is absorbed
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
            raise AssertionError("not interrupted")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init leaves it (its handler is in C++)
        stop.claim()
        assert signal.getsignal(signal.SIGTERM) == stop.handler
    assert {s: signal.getsignal(s) for s in before} == before


def test_status_without_slurm_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert slurm.status_line(tmp_path, []) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol, no sacct
    line = slurm.status_line(tmp_path, [{"started": "2026-01-01 00:00:00", "slurm": {"job_id": "42"}}])
    assert line == "slurm job 42: unknown (no scontrol or sacct here)"


# ---------------------------------------------------------------------------------------------
# Real Slurm


def submit(cluster, out: Path, *extra: str, slurm_opts: str = "cpus-per-task=1", env: dict | None = None) -> str:
    cmd = [sys.executable, "-m", "xtra.cli.main", "study", "submit", "block-size", "--preset", "smoke",
           "--out", str(out), "--slurm", slurm_opts, *SETS, *extra]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("XTRA_") or k == "XTRA_TEST_SLURM"}
    res = subprocess.run(cmd, cwd=ROOT, env={**environ, **(env or {})}, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr + res.stdout
    job = res.stdout.split("submitted job ", 1)[1].split(":", 1)[0]
    assert slurm.submitted_jobs(out)[-1]["job_id"] == job
    return job


def finish(cluster, job: str, out: Path, timeout: float = JOB_TIMEOUT) -> dict[str, str]:
    try:
        info = cluster.wait_state(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"),
                                  timeout)
    except AssertionError:
        cluster.run("scancel", job, check=False)
        raise
    log = out / "slurm" / f"slurm-{job}.out"
    assert info["JobState"] == "COMPLETED", log.read_text() if log.is_file() else info
    return info


def science(df: pl.DataFrame) -> pl.DataFrame:
    return df.select(SCIENCE).sort("config_hash")


def starts(trial_dir: Path) -> list[dict]:
    path = trial_dir / "attempts.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [a for a in map(json.loads, lines) if a["event"] == "start"]


@dataclass
class Job:
    job_id: str
    out: Path
    scratch: Path | None = None
    storage: str | None = None
    watcher: threading.Thread | None = None
    problem: str | None = None  # what the watcher saw go wrong
    finished_before_requeue: set[str] = field(default_factory=set)


def watch(cluster, job: Job, act) -> None:  # noqa: ANN001
    """Act on a job from a thread, from its submission on: a job does not wait for the tests before it."""
    def run() -> None:
        try:
            act(cluster, job)
        except Exception as err:  # noqa: BLE001 - reported by the test that joins the watcher
            job.problem = f"{type(err).__name__}: {err}"

    job.watcher = threading.Thread(target=run, name=f"watch-slurm-job-{job.job_id}", daemon=True)
    job.watcher.start()


def joined(job: Job) -> Job:
    assert job.watcher is not None
    job.watcher.join(timeout=2 * JOB_TIMEOUT)
    assert not job.watcher.is_alive(), f"the watcher of job {job.job_id} is still waiting"
    assert job.problem is None, job.problem
    return job


def requeue_after_a_trial_finished(cluster, job: Job) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 2 * JOB_TIMEOUT
    while not list(job.out.glob("trials/*/trial.json")):  # one trial finished, the other one started after it
        state = cluster.job(job.job_id).get("JobState")
        if state not in ("PENDING", "RUNNING") or time.monotonic() > deadline:
            raise AssertionError(f"job {job.job_id} is {state} and no trial finished")
        time.sleep(0.2)
    job.finished_before_requeue = {p.parent.name for p in job.out.glob("trials/*/trial.json")}
    cluster.run("scontrol", "requeue", job.job_id)


def extend_once_requeued(cluster, job: Job) -> None:  # noqa: ANN001
    """The time-limited job's second allocation gets the time to finish (as a user would give it; else the
    study takes more allocations)."""
    deadline = time.monotonic() + 2 * JOB_TIMEOUT
    while int(cluster.job(job.job_id).get("Restarts") or 0) < 1:
        info = cluster.job(job.job_id)
        # SIGNALING: the time limit's warning signal being delivered, which this job is there to get
        if info.get("JobState") not in ("PENDING", "RUNNING", "SIGNALING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                                        "REQUEUE_FED") or time.monotonic() > deadline:
            raise AssertionError(f"never requeued: {info}")
        time.sleep(0.5)
    cluster.run("scontrol", "update", f"JobId={job.job_id}", "TimeLimit=10")


@pytest.fixture(scope="module")
def queued(slurm_cluster, s3_server, tmp_path_factory) -> dict[str, Job]:  # noqa: F811
    """The three jobs, queued at once the way a user queues studies, one CPU each, so two run side by
    side on the 2-CPU node: the time-limited one (S3 storage), the reference, the one to requeue."""
    root = tmp_path_factory.mktemp("slurm")
    bucket = s3_server.create_bucket(f"xtra-{secrets.token_hex(6)}")
    jobs = {"timelimit": Job("", root / "timelimit", root / "scratch"), "reference": Job("", root / "reference"),
            "requeue": Job("", root / "requeue")}
    jobs["timelimit"].job_id = submit(
        slurm_cluster, jobs["timelimit"].out, "--storage", bucket, "--set", "axes.model.block_size=[1]",
        "--set", f"pretrain.samples={LONG_SAMPLES}", "--set", "pretrain.checkpoint_every=100000",
        slurm_opts="cpus-per-task=1,time=2,signal=60", env={"XTRA_SLURM_SCRATCH": str(jobs["timelimit"].scratch)})
    jobs["timelimit"].storage = f"{bucket}/timelimit"
    watch(slurm_cluster, jobs["timelimit"], extend_once_requeued)
    for name in ("reference", "requeue"):
        jobs[name].job_id = submit(slurm_cluster, jobs[name].out)
    watch(slurm_cluster, jobs["requeue"], requeue_after_a_trial_finished)
    return jobs


@pytest.fixture(scope="module")
def reference(slurm_cluster, queued) -> pl.DataFrame:  # noqa: F811
    """The smoke study submitted through `xtra study submit`, uninterrupted."""
    job, out = queued["reference"].job_id, queued["reference"].out
    finish(slurm_cluster, job, out)
    df = pl.read_parquet(out / "results.parquet")
    assert len(df) == 2 and set(df["status"]) == {"finished"}
    assert (out / "report" / "index.html").is_file()
    status = CliRunner().invoke(study_app, ["status", str(out)])
    assert f"slurm job {job}: COMPLETED" in status.output, status.output
    runs = json.loads((out / "runs.json").read_text())
    assert runs[-1]["slurm"]["job_id"] == job and runs[-1]["state"] == "finished"
    return science(df)


@on_slurm
def test_smoke_study_submitted_completes_with_report(reference: pl.DataFrame) -> None:
    assert reference.height == 2 and reference["linear_top1"].is_not_null().all()


@on_slurm
def test_scontrol_requeue_resumes_and_reruns_nothing_finished(slurm_cluster, queued, reference) -> None:  # noqa: F811
    job, out = queued["requeue"].job_id, queued["requeue"].out
    done = joined(queued["requeue"]).finished_before_requeue
    info = finish(slurm_cluster, job, out)
    assert info["Restarts"] == "1"
    df = pl.read_parquet(out / "results.parquet")
    assert science(df).equals(reference)  # bitwise: the same science as the uninterrupted study
    for h in done:
        assert len(starts(out / "trials" / h)) == 1, f"finished trial {h} ran again"
    runs = json.loads((out / "runs.json").read_text())
    assert [r["slurm"]["restart"] for r in runs] == [0, 1] and runs[-1]["state"] == "finished"
    assert runs[0]["state"] == "interrupted"


@on_slurm
def test_time_limit_warning_checkpoints_requeues_and_resumes_from_s3_in_fresh_scratch(slurm_cluster, queued) -> None:  # noqa: F811
    # One trial longer than the job's 2-minute limit. Slurm sends the warning (--signal=B:USR1@60) 60-90 s
    # before the limit (its timer ticks every 30 s), i.e. 30-60 s into the allocation, mid-training.
    job, out, scratch = queued["timelimit"].job_id, queued["timelimit"].out, queued["timelimit"].scratch
    log_path = out / "slurm" / f"slurm-{job}.out"
    joined(queued["timelimit"])
    info = finish(slurm_cluster, job, out, timeout=2 * JOB_TIMEOUT)
    log = log_path.read_text()
    assert "xtra: received SIGUSR1" in log and f"xtra: requeueing job {job}" in log, log
    assert f"driver exit code {slurm.STOPPED_EXIT}" in log, log
    assert info["Restarts"] == "1"
    stor = Storage.from_uri(queued["timelimit"].storage)
    path = out.parent / "timelimit-results.parquet"
    path.write_bytes(stor.read_bytes("results.parquet"))
    df = pl.read_parquet(path)
    assert df.height == 1 and df["status"][0] == "finished" and df["samples_seen"][0] == LONG_SAMPLES
    text = stor.read_text(f"trials/{df['config_hash'][0]}/attempts.jsonl")
    attempts = [json.loads(line) for line in text.splitlines()]
    events = [a["event"] for a in attempts]
    assert events == ["start", "preempted", "start", "finish"], events
    # it checkpointed where the warning found it (no regular checkpoint before the end), and continued there
    stopped_at = attempts[1]["samples_seen"]
    assert 0 < stopped_at < LONG_SAMPLES and attempts[2]["checkpoint_samples"] == stopped_at
    # each allocation worked in its own scratch directory, removed when it ended: the second resumed from S3
    assert not list(scratch.glob(f"xtra-{job}-*"))
    dirs = [a["dir"] for a in attempts if a["event"] == "start"]
    assert len({d.split(f"/xtra-{job}-")[1].split("/")[0] for d in dirs}) == 2, dirs
    runs = json.loads(stor.read_text("runs.json"))
    assert [r["slurm"]["restart"] for r in runs] == [0, 1] and [r["state"] for r in runs] == ["interrupted", "finished"]
