"""The import graph of the code folders: levels point one way, and no module imports itself through
others (docs/design.md, "Layers").

Every module (``xtra/``, ``reports/``, ``studies/``, ``cli/`` and ``scripts/``) belongs to one level of
LEVELS, lowest first, and may import only its own level and the ones below. The five layers (core <
study files < reports < studies < entry points) are groups of levels, so core's own order (eight import levels), a
package against the modules around it (``xtra.storage``, ``xtra.studies.ray``) and the scripts are all
held to it. Imports inside functions count; so do imports under ``if TYPE_CHECKING:`` (a type-only
import is still a dependency in that direction); only its body is type-only, never its ``else:``.
Each rule is shown to catch a planted case.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"xtra": "xtra", "studies": "xtra.studies", "reports": "xtra.reports", "cli": "xtra.cli",
           "scripts": "scripts"}

# (level, layer, module prefixes), lowest first. A module's level is that of its longest matching prefix.
LEVELS = (
    ("base", "core", ("xtra.errors", "xtra.fileio", "xtra.limits", "xtra.precision", "xtra.distributed",
                      "xtra.environment", "xtra.attention", "xtra.testing")),
    ("config", "core", ("xtra.config", "xtra.costs", "xtra.schedule", "xtra.overrides")),
    ("model and storage", "core", ("xtra.model", "xtra.storage")),
    ("data", "core", ("xtra.data",)),
    ("records", "core", ("xtra.trialdir", "xtra.checkpoint", "xtra.lease", "xtra.results", "xtra.studydir")),
    ("training", "core", ("xtra.pretrain", "xtra.probe", "xtra.official", "xtra.pictures")),
    ("trial", "core", ("xtra.trial",)),
    ("benchmarks", "core", ("xtra.benchmarks",)),  # `xtra bench`'s package: the library never imports it
    # The study file, parsed once into one typed Study that the reports read too: below the reports.
    ("study files", "study files", ("xtra.studies",)),
    ("reports", "reports", ("xtra.reports",)),
    ("study summaries", "studies", ("xtra.studies.isoflop_lines",)),  # `xtra study show`, with the reports' estimators
    ("ray", "studies", ("xtra.studies.ray",)),
    ("runner", "studies", ("xtra.studies.runner",)),
    ("study benchmarks", "studies", ("xtra.studies.bench", "xtra.studies.wsd_bench", "xtra.studies.halving_bench",
                                     "xtra.studies.fault_campaign", "xtra.studies.fault_checks",
                                     "xtra.studies.report_bench")),
    ("entry points", "entry", ("xtra.cli", "scripts")),
)
NOTEBOOK_API = "xtra"  # xtra/__init__.py: the entry points for notebooks, above everything


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = list(rel.with_suffix("").parts[1:])
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([FOLDERS[rel.parts[0]], *parts])


def find_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS if (root / folder).is_dir() for p in (root / folder).rglob("*.py")}


MODULES = find_modules()


def level(module: str) -> int:
    if module == NOTEBOOK_API:
        return len(LEVELS) - 1
    best, index = "", -1
    for i, (_, _, prefixes) in enumerate(LEVELS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    return index


def layer(module: str) -> str:
    return LEVELS[level(module)][1]


def _owner(dotted: str) -> str | None:
    """The project module a dotted import name lands in (a function or class -> its module)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def project_imports(module: str) -> set[str]:
    """Every project module `module` imports: at the top, inside functions, under TYPE_CHECKING."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
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


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a higher level (a module with no level yet imports nothing: give it one first)."""
    return [f"{m} ({LEVELS[level(m)][0] if level(m) >= 0 else 'no level'}) imports {d} ({LEVELS[level(d)][0]})"
            for m, deps in sorted(graph.items()) for d in sorted(deps) if level(d) > level(m) or level(m) < 0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_covers_every_folder_and_every_module_has_a_level():
    assert {"xtra.config", "xtra.reports.build", "xtra.studies.runner", "xtra.cli.main", "scripts.lock"} <= set(GRAPH)
    assert "xtra.studydir" in GRAPH["xtra.studies.runner"]  # the parser sees real edges
    assert [m for m in MODULES if level(m) < 0] == []


def test_levels_import_only_downwards():
    assert upward_imports(GRAPH) == []


def test_reports_and_core_never_import_the_study_runner_or_ray():
    """Core imports nothing of the studies; the reports only the study files (the typed Study)."""
    for m, deps in GRAPH.items():
        if layer(m) == "core":
            assert not [d for d in deps if d.startswith("xtra.studies")], m
        if layer(m) in ("study files", "reports"):
            assert not [d for d in deps if d.startswith("xtra.studies") and layer(d) != "study files"], m


def test_only_benchmarks_and_entry_points_import_the_benchmarks():
    """Benchmarks are not the library: core, reports and the study runner never import them."""
    importers = {m for m, deps in GRAPH.items() for d in deps if d.startswith("xtra.benchmarks")}
    allowed = ("xtra.benchmarks", "xtra.cli", "scripts", "xtra.studies.bench", "xtra.studies.wsd_bench",
               "xtra.studies.halving_bench")
    assert sorted(m for m in importers if not m.startswith(allowed)) == []


FIXTURES = ("xtra.testing", "xtra.reports.calibration.synthetic")
FIXTURE_IMPORTERS = ("xtra.testing", "xtra.benchmarks", "xtra.reports.calibration", "xtra.studies.bench",
                     "xtra.studies.wsd_bench", "xtra.studies.halving_bench", "xtra.studies.fault_campaign",
                     "xtra.studies.fault_checks", "xtra.studies.report_bench", "xtra.cli.bench", "scripts")


def fixture_importers(graph: dict[str, set[str]]) -> list[str]:
    """Modules of the library that import the fixtures (the local S3 server, the synthetic studies): none may."""
    return sorted(m for m, deps in graph.items() if any(d.startswith(FIXTURES) for d in deps)
                  and not m.startswith(FIXTURE_IMPORTERS))


def test_only_tests_benchmarks_and_the_calibration_suite_import_the_fixtures():
    """The local S3 server and the synthetic studies are fixtures: core, the study files, the reports and
    the studies never import them (the tests, the benchmarks and the calibration suite do)."""
    assert fixture_importers(GRAPH) == []
    synthetic = "xtra.reports.calibration.synthetic"
    assert synthetic in GRAPH["xtra.reports.calibration.laws"]  # the parser sees the real edge
    planted = {**GRAPH, "xtra.reports.build": GRAPH["xtra.reports.build"] | {synthetic}}
    assert fixture_importers(planted) == ["xtra.reports.build"]


FOLDER_CEILING = {"xtra": "core", "xtra.reports": "reports", "xtra.studies": "studies"}
LAYER_ORDER = ("core", "study files", "reports", "studies", "entry")


def folder_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a module to a layer above the highest its folder holds."""
    found = []
    for module, deps in graph.items():
        if module == NOTEBOOK_API or module.startswith(("xtra.cli", "scripts")):
            continue
        folder = next((f for f in ("xtra.reports", "xtra.studies") if module == f or module.startswith(f + ".")),
                      "xtra")
        top = LAYER_ORDER.index(FOLDER_CEILING[folder])
        found += [f"{module} -> {d}" for d in sorted(deps) if d in MODULES and LAYER_ORDER.index(layer(d)) > top]
    return found


def test_no_module_imports_a_layer_above_what_its_folder_holds():
    """A module's folder says its layer at a glance: nothing in ``xtra/`` itself (core) imports the study
    files, the reports or the studies; nothing in ``reports/`` imports the studies (the report benchmark and
    the synthetic studies once sat in ``xtra/`` and did)."""
    assert folder_violations(GRAPH) == []
    planted = {**GRAPH, "xtra.benchmarks.probe": GRAPH["xtra.benchmarks.probe"] | {"xtra.studies.spec"}}
    assert folder_violations(planted) == ["xtra.benchmarks.probe -> xtra.studies.spec"]


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_no_module_outside_tests_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > 600}
    assert long == {}


def long_functions(source: str, limit: int) -> dict[str, int]:
    """Functions (methods and nested ones included) longer than `limit` lines, by name."""
    return {node.name: n for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (n := node.end_lineno - node.lineno + 1) > limit}


def test_no_function_outside_tests_is_over_120_lines_and_the_training_loop_under_100():
    long = {f"{p.relative_to(ROOT)}:{name}": n for p in MODULES.values()
            for name, n in long_functions(p.read_text(), 120).items()}
    assert long == {}
    loop = long_functions((ROOT / "xtra" / "pretrain.py").read_text(), 0)["pretrain"]
    assert loop < 100, f"xtra.pretrain.pretrain is {loop} lines: the loop should read at a glance"


def test_a_planted_long_function_is_caught():
    body = "\n".join(f"    x{i} = {i}" for i in range(121))
    assert long_functions(f"def f():\n{body}\n", 120) == {"f": 122}
    assert long_functions(f"def f():\n{body}\n", 122) == {}


# ---------------------------------------------------------------------------------------------
# Planted cases: each rule above fails on the loophole it closes


def _planted(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    global MODULES
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    saved = MODULES
    try:
        MODULES = {**{m: p for m, p in saved.items()}, **{module_name_in(tmp_path, tmp_path / rel): tmp_path / rel
                                                          for rel in files}}
        return {module_name_in(tmp_path, tmp_path / rel): project_imports(module_name_in(tmp_path, tmp_path / rel))
                for rel in files}
    finally:
        MODULES = saved


def module_name_in(root: Path, path: Path) -> str:
    rel = path.relative_to(root)
    parts = list(rel.with_suffix("").parts[1:])
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([FOLDERS[rel.parts[0]], *parts])


def test_a_cycle_and_an_upward_import_inside_a_function_are_seen(tmp_path):
    graph = _planted(tmp_path, {"xtra/planted_a.py": "from xtra.reports import planted_b\n",
                                "reports/planted_b.py": "def f():\n    import xtra.planted_a\n"})
    assert graph == {"xtra.planted_a": {"xtra.reports.planted_b"}, "xtra.reports.planted_b": {"xtra.planted_a"}}
    assert upward_imports(graph) and cycles(graph)


def test_the_else_of_type_checking_is_a_real_import(tmp_path):
    graph = _planted(tmp_path, {"xtra/data/planted.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                         "    pass\nelse:\n    from xtra.studies import runner\n")})
    assert graph == {"xtra.data.planted": {"xtra.studies.runner"}}
    assert upward_imports(graph) == ["xtra.data.planted (data) imports xtra.studies.runner (runner)"]


def test_a_type_only_upward_import_counts(tmp_path):
    graph = _planted(tmp_path, {"xtra/data/planted.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                         "    from xtra.studies.spec import Study\n")})
    assert upward_imports(graph) == ["xtra.data.planted (data) imports xtra.studies.spec (study files)"]


def test_core_has_an_order_of_its_own(tmp_path):
    graph = _planted(tmp_path, {"xtra/config_planted.py": "from xtra import pretrain\n"})
    assert level("xtra.config_planted") == -1  # a new module must be given a level first ...
    assert [m for m in graph if level(m) < 0] == ["xtra.config_planted"]
    assert upward_imports({"xtra.config": {"xtra.pretrain"}}) == [
        "xtra.config (config) imports xtra.pretrain (training)"]  # ... and then may not import upwards


def test_a_package_cycle_through_its_parent_is_seen():
    """xtra.storage importing the study directory's owner, which imports storage (through the lease)."""
    graph = {**GRAPH, "xtra.storage.store": GRAPH["xtra.storage.store"] | {"xtra.studydir"}}
    assert "xtra.storage.store (model and storage) imports xtra.studydir (records)" in upward_imports(graph)
    ray_up = {**GRAPH, "xtra.studies.spec": GRAPH["xtra.studies.spec"] | {"xtra.studies.ray.tuner"}}
    assert "xtra.studies.spec (study files) imports xtra.studies.ray.tuner (ray)" in upward_imports(ray_up)


def test_scripts_are_in_the_graph(tmp_path):
    assert all(layer(m) == "entry" for m in MODULES if m.startswith("scripts."))
    graph = _planted(tmp_path, {"xtra/data/planted.py": "def f():\n    import scripts.lock\n"})
    assert upward_imports(graph) == ["xtra.data.planted (data) imports scripts.lock (entry points)"]


def test_a_study_file_importing_the_reports_is_seen():
    """The study files sit below the reports (which read the typed Study): isoflop's `show` lines, which
    ask the reports' estimators, live above them in xtra.studies.isoflop_lines."""
    graph = {**GRAPH, "xtra.studies.isoflop": GRAPH["xtra.studies.isoflop"] | {"xtra.reports.approaches"}}
    assert "xtra.studies.isoflop (study files) imports xtra.reports.approaches (reports)" in upward_imports(graph)
    assert "xtra.reports.approaches" in GRAPH["xtra.studies.isoflop_lines"]
