"""Studies on real Ray with real Fashion-MNIST (smoke preset: seconds per trial).

One uninterrupted reference run of the smoke `block-size` study is shared; the fault-injected run
must reproduce its metrics exactly for the same config hashes. Every `xtra study` runs as a
subprocess, like a user. Killing a driver and resuming is tested in test_s3_studies.py (from the
study's URI, on a two-node cluster) and test_wsd_study.py (a local cluster, trunk and branches).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import faults
import polars as pl
import pytest
from drivers import driver_env
from typer.testing import CliRunner

from xtra import lease
from xtra import studydir as st
from xtra.cli.study import app
from xtra.studies.load import load_study

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
METRICS = ("samples_seen", "train_loss", "val_loss", "linear_top1", "attentive_top1", "linear_best_lr",
           "attentive_best_lr")
CONTRACT = ("study", "trial_id", "config_hash", "status", "error", "seed", "model.block_size", "block_size", "width",
            "depth", "n_params", "n_params_encoder", "flops_per_image", "samples_seen", "train_loss", "val_loss",
            "linear_top1", "attentive_top1", "linear_best_lr", "attentive_best_lr", "wall_s")
TIMEOUT = 300

needs_data = pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")


def _study_cmd() -> list[str]:
    """`xtra study` as a subprocess, exactly as the console script runs it."""
    return [sys.executable, "-m", "xtra.cli.main", "study"]


def xtra(*args: str, env: dict[str, str] | None = None, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([*_study_cmd(), *args], cwd=ROOT, env=env or driver_env(), capture_output=True, text=True,
                          timeout=timeout)


def smoke(study_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return xtra("run", "block-size", "--preset", "smoke", "--out", str(study_dir), "--no-report", "--logger", "none",
                *extra, env=env)


def results(study_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(study_dir / "results.parquet").sort("config_hash")


def attempts(study_dir: Path, config_hash: str) -> list[dict]:
    return st.read_jsonl(st.trial_dir(study_dir, config_hash) / "attempts.jsonl")


def starts(study_dir: Path, config_hash: str) -> list[dict]:
    return [a for a in attempts(study_dir, config_hash) if a["event"] == "start"]


def same_metrics(a: dict, b: dict) -> None:
    for key in METRICS:
        assert a[key] == b[key], f"{key}: {a[key]} != {b[key]}"


@pytest.fixture(scope="module")
def smoke_hashes() -> dict[int, str]:
    return {s.params["model.block_size"]: s.config_hash for s in load_study("block-size", preset="smoke").expand()}


@dataclass
class Reference:
    study_dir: Path
    rows: dict[str, dict]  # config_hash -> result row

    def __getitem__(self, config_hash: str) -> dict:
        return self.rows[config_hash]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The smoke block-size study run once, uninterrupted."""
    if not FASHION.is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    study_dir = tmp_path_factory.mktemp("reference")
    proc = smoke(study_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Reference(study_dir, {row["config_hash"]: row for row in results(study_dir).to_dicts()})


# ---------------------------------------------------------------------------------------------
# Fast: no Ray


def test_bad_study_fails_before_ray_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('size = "cpu-s"\n[axes]\n"model.block_size" = [1, 3]\n')
    out = tmp_path / "study"
    t0 = time.monotonic()
    res = CliRunner().invoke(app, ["run", str(bad), "--out", str(out)])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "axes.model.block_size=3" in lines[0] and "8x8 patch grid" in lines[0]
    assert not out.exists() and time.monotonic() - t0 < 10
    # a missing dataset (the paper preset's placeholder) fails the same way, before Ray
    res = CliRunner().invoke(app, ["run", "block-size", "--preset", "paper", "--out", str(out)])
    assert res.exit_code == 2 and "data.name='imagefolder:/path/to/imagenet'" in res.output
    assert not out.exists()
    import ray

    assert not ray.is_initialized()


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    with lease.StudyLock(tmp_path, "test"):
        with pytest.raises(lease.StudyLocked, match=rf"in use by pid {os.getpid()} on {socket.gethostname()} "
                                                 r"\(test, since .*, heartbeat \d+s ago\)"):
            lease.StudyLock(tmp_path, "second").acquire()
    assert not (tmp_path / lease.LOCK).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / lease.LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                                "started": "then", "command": "xtra study run"}))
    lock = lease.StudyLock(tmp_path, "test").acquire()
    assert lock.took_over["pid"] == int(dead.stdout)
    assert lease.read_lock(tmp_path)["pid"] == os.getpid()
    lock.release()


# ---------------------------------------------------------------------------------------------
# Slow: real Ray


@pytest.mark.slow
@needs_data
def test_end_to_end(reference: Reference, smoke_hashes: dict[int, str]) -> None:
    study_dir = reference.study_dir
    df = results(study_dir)
    assert df.height == 2 and set(df["config_hash"]) == set(smoke_hashes.values())
    assert all(c in df.columns for c in CONTRACT), df.columns
    assert set(df["status"]) == {"finished"} and df["error"].null_count() == 2
    for row in df.to_dicts():
        assert 0.0 < row["linear_top1"] <= 1.0 and 0.0 < row["attentive_top1"] <= 1.0
        assert row["samples_seen"] == 512 and row["block_size"] == row["model.block_size"]
        assert row["n_params"] > row["n_params_encoder"] > 0 and row["flops_per_image"] > 0
    curves = pl.read_parquet(study_dir / "curves.parquet")
    assert set(curves.columns) >= {"study", "trial_id", "config_hash", "step", "samples_seen", "loss", "lr", "wall_s"}
    assert curves.group_by("config_hash").len().height == 2 and curves["samples_seen"].max() == 512
    written = load_study(study_dir)  # the resolved study.toml
    assert written.preset == "smoke"
    assert [s.config_hash for s in written.expand()] == [smoke_hashes[1], smoke_hashes[2]]
    assert not (study_dir / lease.LOCK).exists()
    assert json.loads((study_dir / st.RUNS).read_text())[-1]["state"] == "finished"
    res = CliRunner().invoke(app, ["status", str(study_dir)])
    assert res.exit_code == 0 and "2 finished · 0 running · 0 interrupted · 0 failed · 0 pending" in res.output


@pytest.mark.slow
@needs_data
def test_a_crash_is_retried_exactly_and_a_nan_fails_alone(reference: Reference, smoke_hashes: dict[int, str],
                                                           tmp_path: Path) -> None:
    study_dir = tmp_path / "faults"
    k1, k2 = smoke_hashes[1], smoke_hashes[2]
    env = driver_env(**faults.env(CRASH_ONCE="model.block_size=1@128", NAN="model.block_size=2@64"))
    proc = smoke(study_dir, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one trial failed
    assert "1 trial(s) failed" in proc.stdout
    df = {r["config_hash"]: r for r in results(study_dir).to_dicts()}
    # crash once: retried by Tune from its checkpoint, and the result is exactly the uninterrupted one
    assert df[k1]["status"] == "finished" and df[k1]["attempts"] == 2
    events = [a["event"] for a in attempts(study_dir, k1)]
    assert events == ["start", "error", "start", "finish"], events
    assert "injected fault" in attempts(study_dir, k1)[1]["error"]
    assert starts(study_dir, k1)[1]["checkpoint_samples"] >= 128
    same_metrics(df[k1], reference[k1])
    # NaN: failed with its error (no pointless retries), while the other trial finished
    assert df[k2]["status"] == "failed" and df[k2]["attempts"] == 1
    assert df[k2]["error"].startswith("NonFiniteLoss: non-finite loss") and "step" in df[k2]["error"]
    assert df[k2]["linear_top1"] is None and df[k2]["block_size"] == 2
