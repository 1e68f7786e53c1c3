"""Orchestration overhead, measured side by side in one run: the same short trials through Ray Tune
and back to back in this process, and the time from `xtra study run` to the first trial step."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from xtra import trialdir as td
from xtra.studies.load import load_study
from xtra.trial import run_trial


def _first_step_seconds(study_dir: Path, n_trials: int, timeout: float = 300.0) -> tuple[float, float]:
    """Start `xtra study run` as a user would; seconds until a trial logs its first step, and until it exits."""
    cmd = [sys.executable, "-m", "xtra.cli.main", "study", "run", "block-size", "--preset", "smoke", "--out",
           str(study_dir), "--no-report", "--seeds", str(max(1, n_trials // 2))]
    root = Path(__file__).resolve().parents[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    try:
        while proc.poll() is None and time.perf_counter() - t0 < timeout:
            if first is None and any(p.stat().st_size > 0 for p in study_dir.glob(f"trials/*/{td.METRICS}")):
                first = time.perf_counter() - t0
            time.sleep(0.05)
        proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    finally:
        if proc.poll() is None:
            proc.kill()
    return (first if first is not None else float("nan")), time.perf_counter() - t0


def _quiet_console() -> Any:
    import io

    from rich.console import Console

    return Console(file=io.StringIO())


def bench_orchestration(n_trials: int = 4, status_trials: int = 1000) -> dict[str, Any]:
    """`n_trials` smoke trials (k in 1, 2; n_trials // 2 seeds) through Ray vs back to back in-process;
    the same Ray run with the default tracker (TensorBoard) vs none; `xtra study status` on a directory
    of `status_trials` trials; the lease's heartbeat cost."""
    from xtra.studies.runner import run_study

    seeds = max(1, n_trials // 2)
    study = load_study("block-size", preset="smoke", seeds=seeds)
    trials = study.trials()
    with tempfile.TemporaryDirectory(prefix="xtra-bench-orch-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        for cfg in trials:
            run_trial(cfg, root / "inprocess" / cfg.config_hash())
        in_process = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_study(study.with_resources(loggers=[]), root / "ray", live=False, build_report=False,
                  console=_quiet_console())
        through_ray = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_study(study.with_resources(loggers=["tensorboard"]), root / "ray-tb", live=False, build_report=False,
                  console=_quiet_console())
        with_tracker = time.perf_counter() - t0
        first_step, cli_total = _first_step_seconds(root / "cli", n_trials)
        upload = bench_upload(root / "inprocess" / trials[0].config_hash(), trials[0])
        status = bench_status(root / "status", status_trials)
    return {"n_trials": len(trials), "in_process_s": in_process, "ray_s": through_ray,
            "overhead_ratio": through_ray / in_process, "ray_tensorboard_s": with_tracker,
            "tracker_overhead_ratio": with_tracker / through_ray, "cli_first_step_s": first_step,
            "cli_total_s": cli_total, **status, **bench_heartbeat(root / "lease"), **upload}


def bench_upload(run_dir: Path, cfg: Any, repeats: int = 3) -> dict[str, Any]:
    """Upload overhead of a finished smoke trial when the study's storage is S3 (a moto server on
    127.0.0.1; a real store adds its network time): a commit per checkpoint (what a trial pays at each
    one) and per trial (the first commit, then one per later checkpoint and the final one), as ratios
    to the trial's wall time."""
    from xtra import trialdir as td
    from xtra.benchmarks.storage import measure_upload_local_s3

    row = td.read_result(run_dir) or {}
    wall = float(row.get("wall_s") or 0.0)
    try:
        m = measure_upload_local_s3(run_dir, trial_wall_s=wall, repeats=repeats)
    except ImportError as err:  # moto is a dev extra
        return {"upload_error": f"{type(err).__name__}: {err}"}
    checkpoints = max(1, -(-cfg.pretrain.samples // cfg.pretrain.checkpoint_every))
    per_trial = m["trial_dir_upload_s"] + checkpoints * m["checkpoint_commit_s"]
    return {"upload_trial_wall_s": wall, "upload_checkpoint_bytes": m["checkpoint_bytes"],
            "upload_trial_dir_bytes": m["trial_dir_bytes"], "upload_checkpoints": checkpoints,
            "upload_per_checkpoint_s": m["checkpoint_commit_s"],
            "upload_per_checkpoint_ratio": m["checkpoint_commit_ratio"],
            "upload_per_trial_s": per_trial, "upload_per_trial_ratio": per_trial / wall}


def bench_status(study_dir: Path, n_trials: int = 1000, curve_rows: int = 20) -> dict[str, Any]:
    """`xtra study status` (a subprocess, as a user runs it) on a grid study of `n_trials` finished
    trials whose directories are written through xtra.trialdir, like a real run's."""
    from xtra import studydir as st
    from xtra import trialdir as td

    study = load_study("block-size", preset="smoke", seeds=max(1, n_trials // 2))
    study_dir.mkdir(parents=True, exist_ok=True)
    st.write_study_toml(study_dir, study.to_toml())
    for i, spec in enumerate(study.expand()):
        run = td.path(study_dir, spec.config_hash)
        run.mkdir(parents=True)
        td.write_config(run, spec.config)
        td.write_params(run, study=study.name, preset=study.preset, trial_id=spec.trial_id, params=spec.params,
                        seed=spec.seed, config_hash=spec.config_hash)
        td.record_attempt(run, "start", pid=0)
        with open(run / td.METRICS, "w") as f:
            for step in range(1, curve_rows + 1):
                f.write(f'{{"step": {step}, "samples_seen": {64 * step}, "loss": {1 / step}, "lr": 0.001}}\n')
        td.write_result(run, {"samples_seen": 64 * curve_rows, "train_loss": 0.1 + i * 1e-6,
                              "probe_hash": spec.config.probe_hash(), "linear_top1": 0.5})
        td.record_attempt(run, "finish")
    root = Path(__file__).resolve().parents[1]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "xtra.cli.main", "study", "status", str(study_dir)], cwd=root,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0 or f"{n_trials} finished" not in proc.stdout:
        raise RuntimeError(f"bench_status: `xtra study status` failed: {proc.stdout[-500:]}{proc.stderr[-500:]}")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", "import xtra.cli.main"], cwd=root, capture_output=True)
    startup = time.perf_counter() - t0
    return {"status_trials": n_trials, "status_s": seconds, "status_cli_startup_s": startup}


def bench_heartbeat(study_dir: Path, beats: int = 200) -> dict[str, Any]:
    """What the lease costs: one heartbeat write, and the fraction of an hour spent writing them."""
    from xtra import lease
    from xtra import studydir as st

    lock = lease.StudyLock(study_dir, "bench", heartbeat_s=3600).acquire()
    try:
        t0 = time.perf_counter()
        for _ in range(beats):
            st.atomic_write_json(lock.path, {**lease.read_lock(study_dir), "heartbeat": time.time()})
        per_beat = (time.perf_counter() - t0) / beats
    finally:
        lock.release()
    return {"heartbeat_write_s": per_beat, "heartbeat_overhead_ratio": per_beat / lease.HEARTBEAT_S}
