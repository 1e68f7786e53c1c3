"""Static tools see every module: go-to-definition (jedi, the engine behind many editors) resolves a
name from each code folder, from inside the repository and from outside it, in this environment.

The folders studies/, reports/ and cli/ are reached at their import path through the links
xtra/studies, xtra/reports and xtra/cli (setup.py): an import hook that maps folders to packages is
code static tools never run, and with one they resolved nothing under xtra.studies, xtra.reports or
xtra.cli (about 45% of the code)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_layers import MODULES

jedi = pytest.importorskip("jedi")  # in the lock (dev extra): skipped only outside the locked environment

ROOT = Path(__file__).resolve().parents[1]
ONE_NAME_PER_FOLDER = {
    "xtra": ("xtra.config", "TrialConfig"),
    "studies": ("xtra.studies.runner", "run_study"),
    "studies/ray": ("xtra.studies.ray.tuner", "fit"),
    "reports": ("xtra.reports.build", "build_report"),
    "reports/scaling": ("xtra.reports.scaling.fit", "fit_form"),
    "cli": ("xtra.cli.main", "app"),
}


@pytest.fixture(scope="module")
def environment():
    return jedi.create_environment(str(Path(sys.executable).parent.parent), safe=False)


def definition(environment, module: str, name: str, where: Path) -> list[Path]:
    code = f"import {module}\n{module}.{name}"
    script = jedi.Script(code, path=where / "example.py", environment=environment, project=jedi.Project(where))
    return [d.module_path for d in script.goto(2, len(code.splitlines()[1]) - 1, follow_imports=True)
            if d.module_path is not None]


@pytest.mark.parametrize("folder", sorted(ONE_NAME_PER_FOLDER))
@pytest.mark.parametrize("inside", [True, False], ids=["inside the repository", "outside it"])
def test_a_name_in_every_folder_resolves(environment, folder: str, inside: bool, tmp_path: Path) -> None:
    module, name = ONE_NAME_PER_FOLDER[folder]
    found = definition(environment, module, name, ROOT if inside else tmp_path)
    assert found, f"{module}.{name}: go-to-definition found nothing"
    assert found[0].resolve().is_relative_to(ROOT / folder.split("/")[0]), found


def test_every_module_resolves(environment, tmp_path: Path) -> None:
    missing = []
    for module, path in sorted(MODULES.items()):
        if not module.startswith("xtra.") or module.endswith("__main__"):
            continue
        script = jedi.Script(f"import {module}", path=tmp_path / "example.py", environment=environment)
        names = script.goto(1, len(f"import {module}") - 1, follow_imports=True)
        if not any(n.module_path and Path(n.module_path).resolve() == path.resolve() for n in names):
            missing.append(module)
    assert missing == []
