"""Private Ray clusters started by tests (`ray start --head --temp-dir=...`): find and stop exactly
their processes. `ray stop` would stop every Ray instance on this machine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from drivers import stop_processes


def processes_under(marker: str) -> list[int]:
    """Pids whose command line mentions ``marker`` (the cluster's private temp dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def stop_cluster(temp_dir: str) -> None:
    """SIGTERM, then SIGKILL, every process of the cluster (all carry its temp dir); then remove it."""
    left = stop_processes(lambda: processes_under(temp_dir), term_grace=3)  # a test cluster holds nothing worth a wait
    assert not left, "the test's Ray cluster is still running"
    shutil.rmtree(temp_dir, ignore_errors=True)
