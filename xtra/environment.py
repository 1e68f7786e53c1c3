"""The environment this process runs in, against the locks it was meant to be installed from.

pylock.toml (PEP 751) pins every package `make setup` installs, pylock.cuda.toml every package
`make setup CUDA=1` installs. A bug report should name both the versions that matter and which
lock, if any, the environment still equals, so `xtra --version` and the test that guards the lock
read them here.
"""

from __future__ import annotations

import hashlib
import sysconfig
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "pylock.toml"  # beside pyproject.toml in a checkout
CUDA_LOCK = LOCK.with_name("pylock.cuda.toml")
LOCKS = (LOCK, CUDA_LOCK)  # the CPU one first: it names the environment when both would
NOT_LOCKED = frozenset({"pip", "xtra"})  # the installer itself, and the project on top of the lock


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def lock_hash(path: Path = LOCK) -> str | None:
    """sha256 of the lock file (first 12 hex digits), or None outside a checkout (a wheel install)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else None


def locked_versions(path: Path = LOCK) -> dict[str, str]:
    packages = tomllib.loads(path.read_text())["packages"]
    return {_canonical(p["name"]): p["version"] for p in packages if "version" in p}


def installed_versions() -> dict[str, str]:
    """What the environment's site-packages hold. Not sys.path: ray puts its vendored copies of psutil
    and colorama on it at import, which are part of ray, not of the environment."""
    paths = list(dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")]))
    found = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions(path=paths)
             if d.metadata["Name"]}
    return {name: version for name, version in found.items() if name not in NOT_LOCKED}


@dataclass(frozen=True)
class Drift:
    missing: dict[str, str]  # locked, not installed
    extra: dict[str, str]  # installed, not locked
    changed: dict[str, tuple[str, str]]  # name -> (locked, installed)

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra or self.changed)

    def __len__(self) -> int:
        return len(self.missing) + len(self.extra) + len(self.changed)

    def describe(self, limit: int = 5) -> str:
        parts = [f"{n} {a} locked, {b} installed" for n, (a, b) in sorted(self.changed.items())]
        parts += [f"{n} {v} missing" for n, v in sorted(self.missing.items())]
        parts += [f"{n} {v} not in the lock" for n, v in sorted(self.extra.items())]
        more = f" (+{len(parts) - limit} more)" if len(parts) > limit else ""
        return "; ".join(parts[:limit]) + more


def drift(path: Path = LOCK) -> Drift:
    locked, installed = locked_versions(path), installed_versions()
    return Drift(missing={n: v for n, v in locked.items() if n not in installed},
                 extra={n: v for n, v in installed.items() if n not in locked},
                 changed={n: (v, installed[n]) for n, v in locked.items() if n in installed and installed[n] != v})


def equal_lock(locks: tuple[Path, ...] = LOCKS) -> Path | None:
    """The lock this environment equals (the first, if it equals several), or None."""
    return next((path for path in locks if path.is_file() and not drift(path)), None)


def lock_line(locks: tuple[Path, ...] = LOCKS) -> str:
    """Which lock the environment equals, or the nearest one and how it differs."""
    present = [path for path in locks if path.is_file()]
    if not present:
        return "lock: none (installed without the repository's pylock.toml)"
    drifts = {path: drift(path) for path in present}
    for path, d in drifts.items():
        if not d:
            return f"lock: {path.name} sha256:{lock_hash(path)} (the environment equals it)"
    nearest = min(present, key=lambda path: len(drifts[path]))
    neither = f"neither {' nor '.join(path.name for path in present)}; nearest " if len(present) > 1 else ""
    return f"lock: {neither}{nearest.name} sha256:{lock_hash(nearest)} (differs: {drifts[nearest].describe()})"


def version_report() -> str:
    """One line per fact: xtra, torch, ray, python, the lock and whether this environment equals it."""
    def version_of(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    import platform

    lines = [f"xtra {version_of('xtra')}", f"torch {version_of('torch')}", f"ray {version_of('ray')}",
             f"python {platform.python_version()} ({platform.machine()})"]
    lines.append(lock_line())
    return "\n".join(lines)
