"""Study drivers started as real processes by tests, and killed at a chosen moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def driver_env(**extra: str) -> dict[str, str]:
    """The environment of a study driver a test starts: this one, less faults injected for another test
    and the user's RAY_ADDRESS (every test starts its own Ray), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XTRA_FAULT_") and k != "RAY_ADDRESS"}
    return {**env, **extra}


def study_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``xtra study ARGS --no-report --logger none`` as a user runs it, output merged into ``stdout``."""
    return subprocess.Popen([sys.executable, "-m", "xtra.cli.main", "study", *args, "--no-report", "--logger", "none"],
                            cwd=ROOT, env=env or driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def starts(run_dir: Path) -> int:
    """How many attempts a trial directory records as started."""
    from xtra import trialdir as td

    return sum(1 for a in td.read_jsonl(Path(run_dir) / td.ATTEMPTS) if a.get("event") == "start")


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], *, timeout: float, what: str,
              every: float = 0.05) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (polled every `every` s); fail, naming `what`, if the
    process exits first or `timeout` seconds pass. The process is gone when this returns."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else f"the driver exited before {what}"
            assert time.monotonic() < deadline, f"{what} never happened"
            time.sleep(every)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop_processes(find: Callable[[], list[int]], term_grace: float, kill_grace: float = 10.0) -> list[int]:
    """SIGTERM every pid `find` returns, wait up to `term_grace` s for them to go, then SIGKILL what is
    left and wait up to `kill_grace` s; returns the pids still running after that."""
    for sig, grace in ((signal.SIGTERM, term_grace), (signal.SIGKILL, kill_grace)):
        for pid in find():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while find() and time.monotonic() < deadline:
            time.sleep(0.2)
    return find()
