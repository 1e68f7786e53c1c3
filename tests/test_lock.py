"""The two locks (pylock.toml for CPU machines, pylock.cuda.toml for CUDA ones), offline: what they
pin, where they name each wheel, and how `make setup` installs them here and elsewhere."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.pylock import Pylock
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402

LOCKS = {"cpu": ROOT / "pylock.toml", "cuda": ROOT / "pylock.cuda.toml"}
# Both locks are for CPython 3.11 on Linux x86_64 (the interpreter `make lock` ran under)
TARGET = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "python_version": "3.11", "python_full_version": "3.11.7", "implementation_name": "cpython"}
LOCAL_TORCH = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")  # this machine's copy


def doc(kind: str) -> dict:
    return tomllib.loads(LOCKS[kind].read_text())


def versions(kind: str) -> dict[str, str]:
    return {canonicalize_name(p["name"]): p["version"] for p in doc(kind)["packages"]}


@pytest.mark.parametrize("kind", sorted(LOCKS))
def test_each_lock_is_pep_751_with_one_hashed_public_wheel_per_package(kind):
    parsed = Pylock.from_dict(doc(kind))  # the parser pip's own reader is built on
    assert str(parsed.lock_version) == "1.0" and len(parsed.packages) > 100
    for p in doc(kind)["packages"]:
        assert set(p) == {"name", "version", "wheels"}, f"{p['name']}: one wheel, no sdist, directory or archive"
        (wheel,) = p["wheels"]
        assert re.fullmatch(r"[0-9a-f]{64}", wheel["hashes"]["sha256"]), p["name"]
        name, version, _, tags = parse_wheel_filename(wheel["name"])
        assert canonicalize_name(p["name"]) == name and Version(p["version"]) == version, wheel["name"]
        assert any(t.interpreter in ("py3", "py39", "cp311") or t.abi == "abi3" for t in tags), wheel["name"]
        assert any(t.platform == "any" or t.platform.endswith("x86_64") for t in tags), wheel["name"]
        # a public location, never this machine's disk: `make setup` substitutes local copies itself
        assert wheel["url"].startswith("https://") and wheel["url"].endswith("/" + urllib.parse.quote(wheel["name"]))
    assert "xtra" not in versions(kind)  # the checkout goes on top, editable


@pytest.mark.parametrize("kind", sorted(LOCKS))
def test_the_locked_versions_satisfy_pyproject_and_its_extras(kind):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {"dev", "images", "trackers", "s3"} | ({"gpu"} if kind == "cuda" else set())
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for name in extras for r in project["optional-dependencies"][name]]
    locked = versions(kind)
    for req in reqs:
        if req.name == "xtra":
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"{kind}: {req} is not in the lock"
        assert req.specifier.contains(locked[name], prereleases=True), f"{kind}: {name} {locked[name]}, pyproject {req}"


def test_the_cuda_lock_holds_pypis_cuda_torch_and_everything_it_loads():
    cuda = versions("cuda")
    assert Version(cuda["torch"]).local is None  # PyPI's Linux torch (the CUDA build), not a +cpu one
    (torch,) = [p for p in doc("cuda")["packages"] if p["name"] == "torch"]
    assert torch["wheels"][0]["url"].startswith("https://files.pythonhosted.org/")
    requires = [Requirement(r) for r in doc("cuda")["tool"]["xtra"]["torch-requires"]]
    needed = [r for r in requires if r.marker is None or r.marker.evaluate(TARGET)]
    assert any(canonicalize_name(r.name).startswith("nvidia-") for r in needed), "torch's metadata: no CUDA library"
    for req in needed:
        name = canonicalize_name(req.name)
        assert name in cuda and req.specifier.contains(cuda[name], prereleases=True), f"torch needs {req}"
    assert "xformers" in cuda and "triton" in cuda
    assert not any(n.startswith("nvidia-") or n in ("triton", "xformers") for n in versions("cpu"))


def test_the_cpu_and_cuda_locks_agree_on_every_shared_package():
    cpu, cuda = versions("cpu"), versions("cuda")
    assert set(cpu) <= set(cuda)
    assert Version(cpu["torch"]).public == Version(cuda["torch"]).public and Version(cpu["torch"]).local == "cpu"
    differ = {n: (cpu[n], cuda[n]) for n in cpu if n != "torch" and cpu[n] != cuda[n]}
    assert not differ, f"the CUDA lock moved packages the CPU lock pins: {differ}"


def test_the_cpu_torch_is_named_at_the_torch_projects_cpu_index():
    (torch,) = [p for p in doc("cpu")["packages"] if p["name"] == "torch"]
    wheel = torch["wheels"][0]
    assert wheel["url"] == "https://download.pytorch.org/whl/cpu/" + wheel["name"].replace("+", "%2B")
    assert wheel["name"] == LOCAL_TORCH.name
    if not LOCAL_TORCH.is_file():
        pytest.skip(f"{LOCAL_TORCH} is only on this project's machines")
    digest = hashlib.sha256()
    with LOCAL_TORCH.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    assert digest.hexdigest() == wheel["hashes"]["sha256"]  # the local copy is the published wheel


def _lock_text(name: str, filename: str, sha256: str, url: str) -> str:
    return (f'lock-version = "1.0"\ncreated-by = "pip"\n\n[[packages]]\nname = "{name}"\nversion = "1.0"\n\n'
            f'[[packages.wheels]]\nname = "{filename}"\nurl = "{url}"\n\n'
            f'[packages.wheels.hashes]\nsha256 = "{sha256}"\n')


def test_from_disk_names_a_local_copy_only_when_its_hash_is_the_locked_one(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    (good / "a-1.0-py3-none-any.whl").write_bytes(b"the locked bytes")
    (bad / "b-1.0-py3-none-any.whl").write_bytes(b"other bytes")
    locked = hashlib.sha256(b"the locked bytes").hexdigest()
    text = (_lock_text("a", "a-1.0-py3-none-any.whl", locked, "https://example.invalid/a-1.0-py3-none-any.whl")
            + _lock_text("b", "b-1.0-py3-none-any.whl", locked, "https://example.invalid/b-1.0-py3-none-any.whl")
            .split("\n\n", 1)[1])
    out, found = lock.from_disk(text, [bad, good])
    urls = {w["name"]: w["url"] for _, w in lock.wheels(out)}
    assert found == 1
    assert urls["a-1.0-py3-none-any.whl"] == (good / "a-1.0-py3-none-any.whl").as_uri()
    assert urls["b-1.0-py3-none-any.whl"] == "https://example.invalid/b-1.0-py3-none-any.whl"  # wrong bytes: fetched


def test_publishing_a_wheel_checks_pypis_hash():
    wheel = {"name": "a-1.0-py3-none-any.whl", "hashes": {"sha256": "1" * 64}}
    index = {"a-1.0-py3-none-any.whl": {"url": "https://files.pythonhosted.org/x/a-1.0-py3-none-any.whl",
                                        "hashes": {"sha256": "1" * 64}}}
    assert lock.public_url("a", wheel, index) == "https://files.pythonhosted.org/x/a-1.0-py3-none-any.whl"
    with pytest.raises(SystemExit, match="has sha256 2222"):
        lock.public_url("a", wheel, {k: {**v, "hashes": {"sha256": "2" * 64}} for k, v in index.items()})
    with pytest.raises(SystemExit, match="not on PyPI"):
        lock.public_url("a", wheel, {})
    cpu_torch = {"name": "torch-9.0.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "hashes": {"sha256": "3" * 64}}
    assert lock.public_url("torch", cpu_torch, {}) == \
        "https://download.pytorch.org/whl/cpu/torch-9.0.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"


@pytest.mark.parametrize("cuda, expected_lock", [("", "pylock.toml"), ("1", "pylock.cuda.toml")])
def test_make_setup_installs_the_chosen_lock_through_its_local_copy(tmp_path, cuda, expected_lock):
    venv = tmp_path / "venv"
    stamp = f"{venv}/.xtra-installed{'-cuda' if cuda else ''}"
    out = subprocess.run(["make", "-n", "-s", f"VENV={venv}", f"CUDA={cuda}", stamp], cwd=ROOT, text=True,
                         capture_output=True, env={**os.environ, "MAKEFLAGS": ""}, check=True).stdout
    assert f"scripts/lock.py from-disk {expected_lock} {venv}/pylock.toml" in out
    assert f"pip install -q --no-compile -r {venv}/pylock.toml" in out
    assert "-m compileall -qq -j 0 -x '/tests/'" in out  # the bytecode on every core, after pip


def test_setup_on_another_python_or_machine_is_one_line_naming_what_the_lock_needs():
    text = LOCKS["cpu"].read_text()
    assert lock.target_of(text) == ("cp311", "linux", "x86_64") == lock.target_of(LOCKS["cuda"].read_text())
    lock.check_interpreter(text, "pylock.toml", "cp311", "linux", "x86_64")
    for python_tag, system, machine in (("cp312", "linux", "x86_64"), ("cp311", "darwin", "arm64"),
                                        ("cp311", "linux", "aarch64")):
        with pytest.raises(SystemExit, match=f"pylock.toml holds wheels for cp311 on linux x86_64, this Python is "
                                             f"{python_tag} on {system} {machine} .allowed: PYTHON=python3.11"):
            lock.check_interpreter(text, "pylock.toml", python_tag, system, machine)
