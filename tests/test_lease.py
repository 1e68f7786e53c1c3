"""A driver that loses its study stops: its lock broken by another driver (--break-lock), its lease in
storage taken, or the lease not refreshed for longer than the stale time (storage unreachable).

Unit level (no Ray): the lease tells its holder once, in one line naming who took it or how long it
went unrefreshed, and never writes over the new holder's record. End to end (real Ray, real data,
`xtra study` as subprocesses): the first driver checkpoints its running trial, writes no results and
exits 3 with that line, while the driver that took the study finishes every trial once."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from drivers import driver_env, study_process

from xtra import lease
from xtra import studydir as st
from xtra.storage import Storage
from xtra.testing.s3server import LocalS3Server

FASHION = Path("/usr/share/datasets/fashion-mnist")


def wait_for(what: str, ready, timeout: float = 30.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(every)


def test_a_broken_local_lock_tells_its_holder_once_and_is_not_written_over(tmp_path: Path) -> None:
    told: list[str] = []
    first = lease.StudyLock(tmp_path, "xtra study run", heartbeat_s=0.05, on_lost=told.append).acquire()
    second = lease.StudyLock(tmp_path, "xtra study resume", break_lock=True).acquire()
    try:
        assert second.took_over["token"] == first._me["token"]
        wait_for("the first holder hearing it lost the lock", lambda: first.lost is not None)
        assert told == [first.lost] and "\n" not in first.lost
        assert first.lost.startswith(f"{tmp_path / lease.LOCK}: taken by pid {os.getpid()} on "
                                     f"{socket.gethostname()} (xtra study resume"), first.lost
        time.sleep(0.3)  # several of the first holder's beats: none may write over the second's lock
        assert lease.read_lock(tmp_path)["token"] == second._me["token"] and told == [first.lost]
        first.release()
        assert lease.read_lock(tmp_path)["token"] == second._me["token"]  # not removed by the loser either
    finally:
        second.release()
    assert not (tmp_path / lease.LOCK).exists()


def test_a_lease_taken_in_storage_tells_its_holder(s3_bucket: str, tmp_path: Path) -> None:
    stor = Storage.from_uri(f"{s3_bucket}/study")
    told: list[str] = []
    first = lease.StudyLock(tmp_path / "a", "xtra study run", storage=stor, settle_s=0.0, heartbeat_s=0.1,
                            on_lost=told.append).acquire()
    second = lease.StudyLock(tmp_path / "b", "xtra study resume", storage=stor, settle_s=0.0,
                             break_lock=True).acquire()
    try:
        wait_for("the first driver hearing its lease was taken", lambda: first.lost is not None)
        assert told == [first.lost]
        assert first.lost.startswith(f"{stor.uri_of(lease.LOCK)}: taken by pid {os.getpid()}"), first.lost
        time.sleep(0.5)
        assert stor.read_json(lease.LOCK)["token"] == second._me["token"]
        first.release()
        assert stor.read_json(lease.LOCK)["token"] == second._me["token"]
    finally:
        second.release()
    assert not stor.is_file(lease.LOCK)


def test_a_lease_that_cannot_be_refreshed_past_the_stale_time_is_lost(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage stops answering: the holder gives the study up once its lease could have been taken
    (STALE_BEATS of its beats), not before, and says for how long it went unrefreshed."""
    pytest.importorskip("moto")
    server = LocalS3Server().start()
    try:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        stor = Storage.from_uri(f"{server.create_bucket('cut-off')}/study")
        told: list[str] = []
        holder = lease.StudyLock(tmp_path, "xtra study run", storage=stor, settle_s=0.0, heartbeat_s=0.2,
                                 on_lost=told.append).acquire()
        time.sleep(0.5)
        assert holder.lost is None  # beats that reach storage keep it
        server.stop()
        wait_for("the holder giving the study up", lambda: holder.lost is not None, timeout=60)
        assert told == [holder.lost] and "\n" not in holder.lost
        assert holder.lost.startswith(f"{stor.uri_of(lease.LOCK)}: not refreshed for "), holder.lost
        assert "past the 1.2 s after which another driver may take it" in holder.lost, holder.lost
        assert float(re.search(r"not refreshed for (\d+) s", holder.lost)[1]) >= 1  # 1.2 s, printed whole
        holder.release()  # storage unreachable: releases the local lock, says nothing more about storage
        assert not (tmp_path / lease.LOCK).exists()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# End to end: two drivers on one study


def _kill(*procs: subprocess.Popen | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def _started(study_dir: Path) -> bool:
    """A trial of the first driver has started and committed a checkpoint."""
    return any((d / "checkpoint.pt").is_file() for d in (study_dir / st.TRIALS).glob("*"))


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")
def test_a_driver_whose_lock_is_broken_stops_and_writes_nothing(tmp_path: Path) -> None:
    study_dir = tmp_path / "study"
    run = ("block-size", "--preset", "smoke", "--out", str(study_dir),
           "--set", "pretrain.samples=3072", "--set", "pretrain.checkpoint_every=256", "--max-concurrent", "1")
    first = study_process("run", *run, env=driver_env(XTRA_HEARTBEAT_S="0.3", XTRA_STOP_GRACE_S="30"))
    second = None
    try:
        wait_for("the first driver's trial checkpointing", lambda: _started(study_dir) or first.poll() is not None,
                 timeout=240, every=0.2)
        assert first.poll() is None, first.stdout.read()
        second = study_process("resume", str(study_dir), "--break-lock",
                         env=driver_env(XTRA_HEARTBEAT_S="0.3"))
        out, _ = first.communicate(timeout=240)
        assert second.poll() is None, "the second driver finished before the first stopped: make the trials longer"
        assert not (study_dir / st.RESULTS).exists()  # the first driver wrote no results
        assert first.returncode == lease.StudyLeaseLost.exit_code, out
        line = out.strip().splitlines()[-1]
        assert line.startswith(f"error: lost the study: {study_dir / lease.LOCK}: taken by pid {second.pid} on "
                               f"{socket.gethostname()} (xtra study resume"), out
        assert "wrote nothing more" in line and "results:" not in out, out
        out2, _ = second.communicate(timeout=400)
        assert second.returncode == 0, out2
    finally:
        _kill(first, second)
    rows = pl.read_parquet(study_dir / st.RESULTS)
    assert rows["status"].to_list() == ["finished"] * 2
    for h in rows["config_hash"]:
        events = [a["event"] for a in st.read_jsonl(st.trial_dir(study_dir, h) / "attempts.jsonl")]
        assert events.count("finish") == 1, (h, events)
    runs = st.read_runs(study_dir)
    assert runs[-1]["driver_pid"] == second.pid
    assert "ended" not in runs[0]  # the first driver wrote nothing after it lost the study


def _checkpointed_in(stor: Storage, hashes: list[str]) -> bool:
    """A trial has committed a checkpoint to the study's storage and is not finished."""
    for h in hashes:
        m = stor.manifest(f"{st.TRIALS}/{h}")
        if m is not None and "tune_checkpoint.json" in m.files and "trial.json" not in m.files:
            return True
    return False


def _finished_once(study_dir: Path, stor: Storage) -> pl.DataFrame:
    rows = pl.read_parquet(study_dir / st.RESULTS)
    assert rows["status"].to_list() == ["finished"] * 2, rows
    for h in rows["config_hash"]:
        events = [json.loads(line)["event"] for line in
                  stor.read_member(f"{st.TRIALS}/{h}", "attempts.jsonl").decode().splitlines() if line.strip()]
        assert events.count("finish") == 1, (h, events)
    return rows


S3_RUN = ("--preset", "smoke", "--max-concurrent", "1")
S3_SETS = ["pretrain.samples=3072", "pretrain.checkpoint_every=256"]


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")
@pytest.mark.parametrize("fault", ["break-lock", "cut-off"])
def test_a_driver_of_a_study_in_s3_that_loses_its_lease_stops_and_writes_nothing(fault: str, tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch
                                                                                  ) -> None:
    """In S3 (a local server of its own): another machine's driver takes the lease with --break-lock, or
    the first driver's storage stops answering for longer than the stale time. Either way the first
    driver stops with one line and exit 3, writes no results, and the study finishes from its URI with
    every trial finished exactly once."""
    pytest.importorskip("moto")
    from xtra.studies.load import load_study

    hashes = [t.config_hash for t in load_study("block-size", preset="smoke", sets=S3_SETS).expand()]
    sets = [a for kv in S3_SETS for a in ("--set", kv)]
    with LocalS3Server() as server:
        for key, value in server.env.items():  # this process reads the study's storage too
            monkeypatch.setenv(key, value)
        bucket = server.create_bucket(f"lease-{fault}")
        stor = Storage.from_uri(f"{bucket}/studies/study")
        env = driver_env(**server.env)
        first = study_process("run", "block-size", *S3_RUN, *sets, "--out", str(tmp_path / "a" / "study"),
                        "--storage", f"{bucket}/studies",
                        env={**env, "XTRA_HEARTBEAT_S": "0.3", "XTRA_STOP_GRACE_S": "30"})
        second = None
        try:
            wait_for("a checkpoint of the first driver's trial in storage",
                     lambda: _checkpointed_in(stor, hashes) or first.poll() is not None, timeout=240, every=0.2)
            assert first.poll() is None, first.stdout.read()
            if fault == "break-lock":
                second = study_process("resume", stor.uri, "--copy", str(tmp_path / "b"), "--break-lock", env=env)
                expected = f"{stor.uri_of(lease.LOCK)}: taken by pid {second.pid} on {socket.gethostname()}"
            else:
                server.pause()  # the lease's beats (0.3 s: stale after 1.8 s) and the trials' commits go unanswered
                try:
                    time.sleep(8)  # a refresh times out after 1 s (x2 attempts): lost well within this
                finally:
                    server.resume()
                expected = f"{stor.uri_of(lease.LOCK)}: not refreshed for "
            out, _ = first.communicate(timeout=300)
            assert first.returncode == lease.StudyLeaseLost.exit_code, out
            line = out.strip().splitlines()[-1]
            assert line.startswith(f"error: lost the study: {expected}") and "wrote nothing more" in line, out
            assert "results:" not in out and not stor.is_file(st.RESULTS), out  # the first driver wrote none
            if second is None:  # the study goes on from its URI alone, on "another machine"
                second = study_process("resume", stor.uri, "--copy", str(tmp_path / "b"), env=env)
            out2, _ = second.communicate(timeout=400)
            assert second.returncode == 0, out2
        finally:
            _kill(first, second)
        _finished_once(tmp_path / "b", stor)
        runs = stor.read_json(st.RUNS)
        assert runs[-1]["driver_pid"] == second.pid and "ended" not in runs[0]  # the first wrote nothing after
