"""Orchestration overhead, measured side by side in one run: the same short trials through Ray Tune
and back to back in this process, and the time from `xtra study run` to the first trial step."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from studies.spec import load_study
from xtra.trial import run_trial


def _first_step_seconds(study_dir: Path, n_trials: int, timeout: float = 300.0) -> tuple[float, float]:
    """Start `xtra study run` as a user would; seconds until a trial logs its first step, and until it exits."""
    cmd = [sys.executable, "-m", "cli.main", "study", "run", "block-size", "--preset", "smoke", "--out",
           str(study_dir), "--no-report", "--seeds", str(max(1, n_trials // 2))]
    root = Path(__file__).resolve().parents[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    try:
        while proc.poll() is None and time.perf_counter() - t0 < timeout:
            if first is None and any(p.stat().st_size > 0 for p in study_dir.glob("trials/*/metrics.jsonl")):
                first = time.perf_counter() - t0
            time.sleep(0.05)
        proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    finally:
        if proc.poll() is None:
            proc.kill()
    return (first if first is not None else float("nan")), time.perf_counter() - t0


def bench_orchestration(n_trials: int = 4) -> dict[str, Any]:
    """`n_trials` smoke trials (k in 1, 2; n_trials // 2 seeds) through Ray vs back to back in-process."""
    from studies.runner import run_study

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
        run_study(study, root / "ray", live=False, build_report=False)
        through_ray = time.perf_counter() - t0
        first_step, cli_total = _first_step_seconds(root / "cli", n_trials)
    return {"n_trials": len(trials), "in_process_s": in_process, "ray_s": through_ray,
            "overhead_ratio": through_ray / in_process, "cli_first_step_s": first_step, "cli_total_s": cli_total}
