"""No private name crosses a module of the shipped code (docs/design.md, "one name, one meaning").

A `_name` is a module's own business: another module that needs it makes it public, so a reader
knows which names are the module's contract. Checked over xtra/, studies/, reports/, cli/ and
scripts/ (the tests may look inside what they test). Two ways to cross are caught:
- `from xtra.x import _name` (absolute or relative, at any depth, in functions too);
- `thing._name` where this module defines no `_name` of its own: a private attribute of another
  module's object or of another module itself. Private APIs of other projects that xtra has to use
  are listed in THIRD_PARTY with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("xtra", "studies", "reports", "cli", "scripts")

THIRD_PARTY = {
    "_shutdown_workers": "torch's DataLoader iterator: stops its worker processes now, not at garbage collection",
    "_internal_kv_put": "Ray's key-value store: the stop flag every trial process can read (studies/ray/stopping.py)",
    "_internal_kv_del": "Ray's key-value store (studies/ray/stopping.py)",
    "_internal_kv_exists": "Ray's key-value store (studies/ray/stopping.py)",
    "_internal_kv_initialized": "Ray's key-value store (studies/ray/stopping.py)",
    "_step": "the official XTRA module's step counter, read to build the parity fixture",
    "_dynamo": "torch._dynamo: the GPU check resets compiled graphs between sections",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_private_names(tree: ast.AST) -> set[str]:
    """Private names this module defines: functions, classes, assignments, attributes it sets, fields."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.arg):
            own.add(node.arg)
        elif isinstance(node, ast.alias):
            own.add((node.asname or node.name).split(".")[0])
    return {n for n in own if _private(n)}


def _project_module(node: ast.ImportFrom) -> bool:
    return node.level > 0 or (node.module or "").split(".")[0] == "xtra"


def crossings(source: str, where: str) -> list[str]:
    """Each place in `source` where a private name of another module is used, as 'where:line what'."""
    tree = ast.parse(source)
    own = _own_private_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and _project_module(node):
            found += [f"{where}:{node.lineno} imports {a.name} from {'.' * node.level}{node.module or ''}"
                      for a in node.names if _private(a.name)]
        elif isinstance(node, ast.ImportFrom) and any(_private(a.name) and a.name not in THIRD_PARTY
                                                      for a in node.names):
            found.append(f"{where}:{node.lineno} imports a private name from {node.module}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own \
                and node.attr not in THIRD_PARTY:
            found.append(f"{where}:{node.lineno} uses .{node.attr}, which this module does not define")
    return found


def shipped_sources() -> list[Path]:
    files = []
    for top in SHIPPED:
        for path in sorted((ROOT / top).rglob("*.py")):
            # xtra/studies, xtra/reports and xtra/cli are links to the top-level folders: read once.
            if any(p.is_symlink() for p in [path, *path.parents] if ROOT in p.parents):
                continue
            files.append(path)
    return files


def test_no_private_name_crosses_a_module():
    found = []
    for path in shipped_sources():
        found += crossings(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "private names used outside their module (make them public):\n" + "\n".join(found)


def test_the_shipped_code_is_all_read():
    names = {str(p.relative_to(ROOT)) for p in shipped_sources()}
    for expected in ("xtra/config.py", "xtra/storage/names.py", "studies/runner.py", "reports/build.py",
                     "cli/main.py", "scripts/official_fixture.py"):
        assert expected in names
    assert not any(n.startswith(("xtra/studies/", "xtra/reports/", "xtra/cli/")) for n in names)


@pytest.mark.parametrize("planted, expected", [
    ("from xtra.storage.names import _secret\n", "imports _secret from xtra.storage.names"),
    ("def f():\n    from .forms import _fit\n    return _fit\n", "imports _fit from .forms"),
    ("from xtra import config\nx = config._digest\n", "uses ._digest"),
    ("import polars as pl\nx = pl._private_thing\n", "uses ._private_thing"),
    ("from numpy import _globals\n", "imports a private name from numpy"),
])
def test_a_planted_crossing_is_caught(planted, expected):
    found = crossings(planted, "planted.py")
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("allowed", [
    "class Stop:\n    _saved: dict = {}\ndef f(stop: Stop):\n    return stop._saved\n",
    "class A:\n    def __init__(self):\n        self._n = 1\n    def g(self, other):\n        return other._n\n",
    "def _helper():\n    pass\nx = _helper\n",
    "from xtra.config import TrialConfig\nx = TrialConfig.__name__\n",
])
def test_a_module_may_use_its_own_private_names(allowed):
    assert crossings(allowed, "allowed.py") == []
