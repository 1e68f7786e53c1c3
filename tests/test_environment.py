"""The locked environment (pylock.toml), the version report, and what a wheel installs."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from typer.testing import CliRunner

from xtra import environment
from xtra.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402


@pytest.mark.skipif(os.environ.get("XTRA_UNLOCKED") == "1", reason="make test-latest runs unlocked on purpose")
def test_the_environment_equals_the_lock():
    if environment.equal_lock() is None:  # name how it differs from the lock `make setup` installs
        d = environment.drift()
        pytest.fail(f"the environment is neither lock ({d.describe(limit=20)} from pylock.toml): run `make setup`")


# What each lock pins and where it names each wheel: tests/test_lock.py.


def test_breaking_dependencies_are_capped_below_their_next_major():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + project["optional-dependencies"]["dev"]
    reqs = {Requirement(r).name: Requirement(r) for r in listed}
    for name in ("ray", "polars", "optuna", "plotly", "pyarrow", "typer", "moto"):
        assert any(s.operator == "<" for s in reqs[name].specifier), f"{name} has no upper bound"
        assert any(s.operator == ">=" for s in reqs[name].specifier), f"{name} has no lower bound"
    gpu = [Requirement(r) for r in project["optional-dependencies"]["gpu"]]
    assert [str(r.specifier) for r in gpu] == ["==0.0.35"]  # asks torch>=2.10 only: never replaces the CPU build
    images = {str(Requirement(r).specifier) for extra in project["optional-dependencies"].values()
              for r in extra if Requirement(r).name == "kaleido"}
    assert len(images) <= 1  # the extras agree with each other


def test_the_lock_script_leaves_the_checkout_out():
    raw = ('lock-version = "1.0"\n\n[[packages]]\nname = "a"\nversion = "1"\n\n[[packages]]\nname = "xtra"\n\n'
           '[packages.directory]\npath = "."\neditable = true\n\n[[packages]]\nname = "b"\nversion = "2"\n')
    doc = tomllib.loads(lock.without_project(raw))
    assert [p["name"] for p in doc["packages"]] == ["a", "b"]


def test_drift_names_what_differs(tmp_path):
    fake = tmp_path / "pylock.toml"
    fake.write_text('lock-version = "1.0"\n[[packages]]\nname = "numpy"\nversion = "0.0.1"\n'
                    '[[packages]]\nname = "no-such-package"\nversion = "1.0"\n')
    d = environment.drift(fake)
    assert d.changed["numpy"][0] == "0.0.1" and "no-such-package" in d.missing and "torch" in d.extra
    assert "numpy 0.0.1 locked" in d.describe()


def test_the_version_line_names_the_lock_the_environment_equals(tmp_path):
    cpu, cuda = tmp_path / "pylock.toml", tmp_path / "pylock.cuda.toml"
    cpu.write_text('lock-version = "1.0"\n[[packages]]\nname = "numpy"\nversion = "0.0.1"\n')
    cuda.write_text('lock-version = "1.0"\n' + "".join(f'[[packages]]\nname = "{n}"\nversion = "{v}"\n'
                                                        for n, v in environment.installed_versions().items()))
    assert environment.equal_lock((cpu, cuda)) == cuda
    assert environment.lock_line((cpu, cuda)) == \
        f"lock: pylock.cuda.toml sha256:{environment.lock_hash(cuda)} (the environment equals it)"
    cuda.write_text(cuda.read_text().replace('name = "numpy"', 'name = "not-numpy"'))
    line = environment.lock_line((cpu, cuda))
    assert environment.equal_lock((cpu, cuda)) is None
    assert line.startswith("lock: neither pylock.toml nor pylock.cuda.toml; nearest pylock.cuda.toml sha256:")
    assert "not-numpy" in line and "numpy " in line
    assert environment.lock_line((tmp_path / "absent.toml",)).startswith("lock: none")


def test_version_names_xtra_torch_ray_and_the_lock():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("xtra ") and "\ntorch 2." in out and "\nray 2." in out
    equal = environment.equal_lock()
    if equal is None:  # `make test-latest` runs unlocked on purpose
        assert "\nlock: neither pylock.toml nor pylock.cuda.toml; nearest " in out and "(differs: " in out
    else:
        assert f"\nlock: {equal.name} sha256:{environment.lock_hash(equal)} (the environment equals it)" in out
    short = CliRunner().invoke(app, ["-h"])
    assert short.exit_code == 0 and "Usage: xtra" in short.output


def test_a_wheel_installs_only_the_xtra_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("xtra-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"xtra"}
    for module in ("xtra/cli/main.py", "xtra/studies/spec.py", "xtra/studies/ray/tuner.py", "xtra/reports/build.py",
                   "xtra/studies/block-size.toml", "xtra/studies/_presets.toml"):
        assert module in names, module
    # every package folder of the checkout made it into the wheel
    for folder, package in (("xtra", "xtra"), ("studies", "xtra/studies"), ("reports", "xtra/reports"),
                            ("cli", "xtra/cli")):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.relative_to(ROOT / folder).as_posix()
            assert f"{package}/{rel}" in names, rel
