"""The import graph of the four code folders: layers point one way, and no module imports itself
through others (DESIGN.md, "Layout and layers").

Layers, lowest first: core (``xtra/``) < reports (``xtra.reports``) < studies (``xtra.studies``)
< entry points (``xtra.cli`` and the notebook API in ``xtra/__init__.py``). A module may import its
own layer and the ones below; imports inside functions count too, imports under
``if TYPE_CHECKING`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"xtra": "xtra", "studies": "xtra.studies", "reports": "xtra.reports", "cli": "xtra.cli"}
LAYERS = ("core", "reports", "studies", "entry")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts[1:])
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([FOLDERS[rel.parts[0]], *parts])


MODULES = {module_name(p): p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py")}


def layer(module: str) -> str:
    if module == "xtra" or module.startswith("xtra.cli"):
        return "entry"
    for name in ("studies", "reports"):
        if module.startswith(f"xtra.{name}"):
            return name
    return "core"


def _owner(dotted: str) -> str | None:
    """The project module a dotted import name lands in (a function or class -> its module)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def project_imports(module: str) -> set[str]:
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            names.update(subs if len(subs) == len(node.names) else [base, *subs])
    return {m for n in names if (m := _owner(n)) and m != module}


GRAPH = {m: project_imports(m) for m in MODULES}


def test_the_graph_covers_every_folder():
    assert {"xtra.config", "xtra.reports.build", "xtra.studies.runner", "xtra.cli.main"} <= set(GRAPH)
    assert "xtra.studydir" in GRAPH["xtra.studies.runner"]  # the parser sees real edges


def test_layers_import_only_downwards():
    upward = [f"{m} ({layer(m)}) imports {d} ({layer(d)})" for m, deps in sorted(GRAPH.items()) for d in sorted(deps)
              if LAYERS.index(layer(d)) > LAYERS.index(layer(m))]
    assert upward == []


def test_reports_and_core_never_import_the_study_runner_or_ray():
    for m, deps in GRAPH.items():
        if layer(m) in ("core", "reports"):
            assert not [d for d in deps if d.startswith("xtra.studies")], m


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_a_cycle_and_an_upward_import_are_seen(tmp_path):
    """The checks above can fail: the same parser on two modules that import each other upwards."""
    global MODULES, GRAPH
    saved = MODULES, GRAPH
    try:
        (tmp_path / "a.py").write_text("from xtra.reports import b\n")
        (tmp_path / "b.py").write_text("def f():\n    import xtra.config\n")
        MODULES = {"xtra.config": tmp_path / "a.py", "xtra.reports": tmp_path / "b.py"}
        graph = {m: project_imports(m) for m in MODULES}
        assert graph == {"xtra.config": {"xtra.reports"}, "xtra.reports": {"xtra.config"}}
        assert layer("xtra.config") == "core" and layer("xtra.reports") == "reports"
    finally:
        MODULES, GRAPH = saved


def test_no_module_outside_tests_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}
