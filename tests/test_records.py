"""Each file on disk has one name, a string constant in exactly one module (docs/design.md, "The owner of
every file on disk"): everyone else asks that module for it, so a file cannot be read under one name and
written under another.

The scan reads every module of xtra/, studies/, reports/, cli/ and scripts/ (the folders of
tests/test_layers.py) and flags a string literal that is an on-disk name or a path ending in one
(``"trials/*/trial.json"``); docstrings and comments are prose and not scanned, and so is a message that
mentions a file in a sentence. A planted case shows the scan catches what it is for.
"""

from __future__ import annotations

import ast
from pathlib import Path

from test_layers import MODULES, ROOT

# name -> the module that owns it (defines the constant, reads and writes the file)
OWNERS = {
    "study.toml": "xtra.studydir", "runs.json": "xtra.studydir", "results.parquet": "xtra.studydir",
    "curves.parquet": "xtra.studydir", "probes.parquet": "xtra.studydir", "optuna.db": "xtra.studydir",
    "halving.json": "xtra.studydir",
    "study.lock": "xtra.lease",
    "config.json": "xtra.trialdir", "checkpoint.pt": "xtra.trialdir", "metrics.jsonl": "xtra.trialdir",
    "log.txt": "xtra.trialdir", "probe.json": "xtra.trialdir", "probe-random.json": "xtra.trialdir",
    "trial.json": "xtra.trialdir", "params.json": "xtra.trialdir", "attempts.jsonl": "xtra.trialdir",
    "status.json": "xtra.trialdir", "tune_checkpoint.json": "xtra.trialdir",
    "workers.jsonl": "xtra.studies.ray.workers",
    "_manifest.json": "xtra.storage.manifest",
    "manifest.json": "xtra.data.collection", ".pack-progress.json": "xtra.data.pack",
    "official.json": "xtra.official",
    "study.sbatch": "xtra.studies.slurm", "jobs.json": "xtra.studies.slurm",
}

# (module, name): why the literal there is not a second name for the owner's file
ALLOWED = {
    ("xtra.config", "checkpoint.pt"): "pretrain.init names a run directory; the config level sits below the "
                                      "records level (tests/test_layers.py), so it cannot ask xtra.trialdir",
    ("scripts.wsd_quality", "runs.json"): "the script's own record of its runs in its work directory, not a "
                                          "study's runs.json",
}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def on_disk_names(source: str) -> list[tuple[int, str]]:
    """(line, name) of each string literal that is an on-disk name or a path ending in one."""
    tree = ast.parse(source)
    prose = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            for name in OWNERS:
                if node.value == name or node.value.endswith("/" + name):
                    out.append((node.lineno, name))
    return sorted(out)


def strays(modules: dict[str, Path]) -> list[str]:
    return [f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}: {name!r} (owner: "
            f"{OWNERS[name]})" for module, path in sorted(modules.items())
            for line, name in on_disk_names(path.read_text())
            if module != OWNERS[name] and (module, name) not in ALLOWED]


def test_every_on_disk_name_is_a_constant_of_its_owner_only():
    assert strays(MODULES) == []


def test_every_owner_defines_its_names():
    for name, owner in OWNERS.items():
        assert name in [n for _, n in on_disk_names(MODULES[owner].read_text())], (name, owner)


def test_a_planted_second_name_is_caught_and_prose_is_not(tmp_path: Path):
    planted = tmp_path / "planted.py"
    planted.write_text('"""Reads study.toml."""\n\n'
                       'def f(d):\n'
                       '    """The trial.json of each trial."""\n'
                       '    print("results.parquet is missing")  # a sentence, not a name\n'
                       '    return [d / "study.toml", d.glob("trials/*/trial.json")]\n')
    assert strays({"xtra.planted": planted}) == [f"{planted}:6: 'study.toml' (owner: xtra.studydir)",
                                                  f"{planted}:6: 'trial.json' (owner: xtra.trialdir)"]
