"""Refresh pylock.toml, the exact environment `make setup` installs (run by `make lock`).

pylock.toml is PEP 751's lock format: pip writes it (`pip lock`) and installs from it, and uv and
PDM read it. Every package, transitive ones included, is pinned to one wheel with its sha256. The
project itself is left out: it is installed editable from the checkout on top of the lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = os.environ.get("TORCH", "torch==2.13.0")  # the CPU build on this machine's disk (README)


def without_project(text: str) -> str:
    """The lock minus the checkout's own entry (a directory, which cannot carry a hash)."""
    head, *blocks = text.split("\n[[packages]]\n")
    kept = [b for b in blocks if "[packages.directory]" not in b]
    return "\n[[packages]]\n".join([head, *kept])


def main() -> int:
    # pip writes the lock beside the project (it records the project's path relative to it)
    raw = ROOT / "pylock.raw.toml"
    try:
        cmd = [sys.executable, "-m", "pip", "lock", "-q", TORCH, "-e", ".[dev]", "-o", raw.name]
        subprocess.run(cmd, cwd=ROOT, check=True)
        text = without_project(raw.read_text())
    finally:
        raw.unlink(missing_ok=True)
    target = ROOT / "pylock.toml"
    tmp_target = target.with_suffix(".toml.tmp")
    tmp_target.write_text(text)
    os.replace(tmp_target, target)
    print(f"wrote {target.relative_to(ROOT)}: {text.count('[[packages]]')} packages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
