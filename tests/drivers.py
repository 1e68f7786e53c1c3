"""Study drivers started as real processes by tests, and killed at a chosen moment."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


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
