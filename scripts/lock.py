"""The two locks `make setup` installs, and the copy of one that installs from this machine's disk.

pylock.toml and pylock.cuda.toml are PEP 751 locks: pip writes them (`pip lock`) and installs from
them (`pip install -r`), and uv and PDM read them. Every package, transitive ones included, is one
wheel with its sha256, for CPython 3.11 on Linux x86_64. The project itself is left out: it is
installed editable from the checkout on top of the lock.

- `pylock.toml` (`make setup`): torch's CPU build, named at the torch project's CPU wheel index
  (download.pytorch.org/whl/cpu), everything else at PyPI.
- `pylock.cuda.toml` (`make setup CUDA=1`): PyPI's torch of the same version, which is the CUDA
  build (its nvidia-* libraries are in the lock), xformers (the `gpu` extra), and every other
  package at the CPU lock's version where PyPI has it.

Commands:
  python scripts/lock.py                 re-resolve both locks (`make lock`)
  python scripts/lock.py cuda            re-resolve pylock.cuda.toml only, against the CPU lock
  python scripts/lock.py from-disk LOCK OUT DIR...
      write OUT: LOCK with every wheel that lies in one of DIRs with the locked sha256 named by
      its path there, the others left at their URL (`make setup` on this project's machines,
      whose copies of the locked wheels lie on disk; pip verifies every hash either way).
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_LOCK, CUDA_LOCK = ROOT / "pylock.toml", ROOT / "pylock.cuda.toml"
TORCH = os.environ.get("TORCH", "torch==2.13.0")
CPU_EXTRAS, CUDA_EXTRAS = "dev", "dev,gpu"
PYPI_SIMPLE = "https://pypi.org/simple/{name}/"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu/"  # where the torch project serves `+cpu` wheels


def without_project(text: str) -> str:
    """The lock minus the checkout's own entry (a directory, which cannot carry a hash)."""
    head, *blocks = text.split("\n[[packages]]\n")
    kept = [b for b in blocks if "[packages.directory]" not in b]
    return "\n[[packages]]\n".join([head, *kept])


def wheels(text: str) -> list[tuple[str, dict]]:
    """(package name, wheel table) for every wheel of a lock."""
    return [(p["name"], w) for p in tomllib.loads(text)["packages"] for w in p.get("wheels", [])]


def public_url(package: str, wheel: dict, index_files: dict[str, dict]) -> str:
    """Where anyone gets this wheel: the torch project's CPU index for a `+cpu` build (not reachable
    from this project's machines, so its sha256 is the local copy's), else PyPI's file of that name,
    which must carry the locked sha256."""
    filename, sha256 = wheel["name"], wheel["hashes"]["sha256"]
    if "+cpu-" in filename:
        return TORCH_CPU_INDEX + urllib.parse.quote(filename)
    found = index_files.get(filename)
    if found is None:
        raise SystemExit(f"{package}: {filename} is not on PyPI; a lock that installs elsewhere needs it there")
    if found["hashes"].get("sha256") != sha256:
        raise SystemExit(f"{package}: PyPI's {filename} has sha256 {found['hashes'].get('sha256')}, the lock {sha256}")
    return found["url"]


def pypi_files(package: str) -> dict[str, dict]:
    """PyPI's files of one project by filename (the JSON form of the simple API, PEP 691)."""
    request = urllib.request.Request(PYPI_SIMPLE.format(name=package),
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return {f["filename"]: f for f in json.load(response)["files"]}


def publish(text: str) -> str:
    """The lock with every wheel that pip found on this machine's disk (file:// URLs) named at its
    public location instead, so that the lock installs on any Linux x86_64 machine."""
    for package, wheel in wheels(text):
        url = wheel.get("url", "")
        if url.startswith("file:"):
            files = {} if "+cpu-" in wheel["name"] else pypi_files(package)
            text = text.replace(f'url = "{url}"', f'url = "{public_url(package, wheel, files)}"')
    return text


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def from_disk(text: str, dirs: list[Path]) -> tuple[str, int]:
    """The lock with each wheel found in `dirs` under its own name and with its locked sha256 named
    by that path (file:// URL); a copy with another hash is ignored, so pip fetches the locked one."""
    found = 0
    for _, wheel in wheels(text):
        for folder in dirs:
            copy = folder / wheel["name"]
            if copy.is_file() and sha256_of(copy) == wheel["hashes"]["sha256"]:
                text = text.replace(f'url = "{wheel["url"]}"', f'url = "{copy.resolve().as_uri()}"')
                found += 1
                break
    return text, found


def target_of(text: str) -> tuple[str, str, str]:
    """(python tag, OS, machine) the lock's wheels are built for, read off its torch wheel's name."""
    (torch_wheel,) = [w["name"] for name, w in wheels(text) if name == "torch"]
    python_tag, _, platform_tag = torch_wheel.removesuffix(".whl").split("-")[-3:]
    linux = re.fullmatch(r"(?:many|musl)?linux(?:_\d+_\d+|\d+)?_(.+)", platform_tag)
    if linux is None:
        raise SystemExit(f"{torch_wheel}: not a Linux wheel; the locks are made on and for Linux")
    return python_tag, "linux", linux.group(1)


def check_interpreter(text: str, lock_name: str, python_tag: str | None = None, system: str | None = None,
                      machine: str | None = None) -> None:
    """One line naming what the lock needs, before pip refuses its first wheel with a longer story."""
    python_tag = python_tag or f"cp{sys.version_info.major}{sys.version_info.minor}"
    system, machine = system or sys.platform, machine or platform.machine()
    wanted = target_of(text)
    if (python_tag, system, machine) != wanted:
        raise SystemExit(f"{lock_name} holds wheels for {wanted[0]} on {wanted[1]} {wanted[2]}, this Python is "
                         f"{python_tag} on {system} {machine} (allowed: PYTHON=python3.11 on Linux x86_64; "
                         "elsewhere see the README's install section)")


def write_atomically(target: Path, text: str) -> None:
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def pip_lock(requirements: list[str], env: dict[str, str] | None = None) -> str:
    # pip writes the lock beside the project (it records the project's path relative to it), under
    # a name PEP 751 allows
    raw = ROOT / "pylock.resolving.toml"
    try:
        cmd = [sys.executable, "-m", "pip", "lock", "-q", *requirements, "-o", raw.name]
        subprocess.run(cmd, cwd=ROOT, check=True, env=env)
        return without_project(raw.read_text())
    finally:
        raw.unlink(missing_ok=True)


def pypi_only_environment() -> dict[str, str]:
    """pip as a user's machine runs it: PyPI alone, none of this machine's local indexes, wheel
    folders or constraints (which hold the CPU torch and would win the resolution)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def wheel_requirements(url: str) -> list[str]:
    """A wheel's unconditional Requires-Dist, from the metadata file PyPI serves beside it (PEP 658)."""
    with urllib.request.urlopen(url + ".metadata", timeout=60) as response:
        metadata = email.parser.BytesParser().parse(response)
    return [r for r in metadata.get_all("Requires-Dist", []) if "extra ==" not in r]


def torch_requires_table(requirements: list[str]) -> str:
    """PEP 751's [tool] table: torch's requirements as its locked wheel states them, so an offline
    test can check that the lock holds the CUDA libraries this torch build loads."""
    items = "".join(f"    {json.dumps(r)},\n" for r in requirements)  # a JSON string is a TOML basic string
    return ("\n[tool.xtra]\n# Requires-Dist of the locked torch wheel (PyPI's metadata file), by scripts/lock.py\n"
            f"torch-requires = [\n{items}]\n")


def lock_cpu() -> None:
    text = publish(pip_lock([TORCH, "-e", f".[{CPU_EXTRAS}]"]))
    write_atomically(CPU_LOCK, text)
    print(f"wrote {CPU_LOCK.name}: {text.count('[[packages]]')} packages")


def lock_cuda() -> None:
    """PyPI's torch (the CUDA build) and xformers; everything else held at the CPU lock's versions."""
    cpu = {p["name"]: p["version"] for p in tomllib.loads(CPU_LOCK.read_text())["packages"]}
    pins = "".join(f"{name}=={version}\n" for name, version in sorted(cpu.items()) if name != "torch")
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write(pins)
        constraints.flush()
        text = pip_lock([TORCH, "-e", f".[{CUDA_EXTRAS}]", "-c", constraints.name], env=pypi_only_environment())
    not_public = [w["name"] for _, w in wheels(text) if not w.get("url", "").startswith("https://")]
    if not_public:
        raise SystemExit(f"pylock.cuda.toml: wheels without a public URL: {', '.join(not_public)}")
    (torch_wheel,) = [w for name, w in wheels(text) if name == "torch"]
    text += torch_requires_table(wheel_requirements(torch_wheel["url"]))
    write_atomically(CUDA_LOCK, text)
    print(f"wrote {CUDA_LOCK.name}: {text.count('[[packages]]')} packages")


def main(argv: list[str]) -> int:
    if not argv:
        lock_cpu()
        lock_cuda()
    elif argv == ["cuda"]:
        lock_cuda()
    elif argv[0] == "from-disk" and len(argv) >= 3:
        source, target, dirs = Path(argv[1]), Path(argv[2]), [Path(d) for d in argv[3:]]
        check_interpreter(source.read_text(), source.name)
        text, found = from_disk(source.read_text(), [d for d in dirs if d.is_dir()])
        write_atomically(target, text)
        print(f"{source.name}: {found} of {len(wheels(text))} wheels from this machine's disk")
    else:
        raise SystemExit("usage: lock.py [cuda | from-disk LOCK OUT DIR...]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
