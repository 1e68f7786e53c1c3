"""The model, attention and the loop run on a stock PyTorch image: torch and numpy only."""

import json
import subprocess
import sys

HEAVY = ("ray", "polars", "plotly", "typer", "rich", "optuna", "scipy", "sklearn", "xformers", "PIL")


def test_core_modules_import_only_torch_and_numpy():
    code = ("import sys, json; import xtra.model, xtra.attention, xtra.pretrain, xtra.distributed; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def _imports_of(path):
    import ast

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_only_the_ray_subpackage_imports_ray_and_only_its_public_api():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders, private = [], []
    for path in sorted(p for d in ("xtra", "studies", "cli", "reports") for p in (root / d).rglob("*.py")):
        mods = list(_imports_of(path))
        rel = path.relative_to(root).as_posix()
        if any(m == "ray" or m.startswith("ray.") for m in mods) and not rel.startswith("studies/ray/"):
            offenders.append(rel)
        private += [f"{rel}: {m}" for m in mods if m.startswith("ray.") and "._" in f".{m}"]
        if "_local_tuner" in path.read_text():
            private.append(f"{rel}: _local_tuner")
    assert offenders == [] and private == []
    assert [p.name for p in (root / "studies" / "ray").glob("*.py")]  # the subpackage exists


def test_the_python_api_imports_nothing_heavy_until_called():
    code = ("import sys, json; import xtra; "
            f"print(json.dumps([m for m in {HEAVY!r} + ('torch',) if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
