"""Every shell and Python example in README.md and docs/*.md runs, as written, on this machine.

A fenced block is an example when its language is python/pycon or bash/sh/shell/console. It is run
unless the line right before its fence is an HTML comment giving the reason it cannot run here,
``<!-- not run: needs a GPU -->``; so a new example runs by default. Python blocks run in a
subprocess with the repository's interpreter (a block of ``>>>`` lines is a doctest: its shown
output must match); shell blocks run through ``bash -e`` with the venv's ``xtra`` first on PATH.
All run in one temporary working directory holding ``my-images/`` (a small generated image
folder) and, for the examples that read a study, one smoke study made once per session at the
path the examples name (``runs/studies/block-size-smoke``, made by the README's first-study example).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGS = {"python": "python", "py": "python", "pycon": "python",
         "bash": "shell", "sh": "shell", "shell": "shell", "console": "shell"}
FENCE = re.compile(r"^(```+)\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*not run\b(.*?)-->\s*$")
STUDY = "runs/studies/block-size-smoke"
NEEDS_STUDY = re.compile(r"block-size-smoke|xtra\.run_study|xtra\.load_")
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Block:
    page: Path
    line: int            # 1-based line of the opening fence
    lang: str            # the fence's language, as written
    code: str
    skip: str | None     # the marker's text after "not run", or None when unmarked

    @property
    def id(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page.name
        return f"{page}:{self.line}"

    @property
    def kind(self) -> str | None:
        return LANGS.get(self.lang)


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of one Markdown page, with the marker (if any) on the line before each."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        ticks, lang, start = m.group(1), m.group(2), i
        j = i + 1
        while j < len(lines) and lines[j].strip() != ticks:
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.match(prev.strip())
        skip = marker.group(1).strip().lstrip(":").strip() if marker else None
        found.append(Block(page, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n", skip))
        i = j + 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]
EXAMPLES = [b for b in ALL if b.kind]
RUNNABLE = [b for b in EXAMPLES if b.skip is None]


def test_markdown_examples_are_found():
    """The runner sees the README's examples (a fence it failed to parse would silently run nothing)."""
    readme = [b for b in RUNNABLE if b.page.name == "README.md"]
    assert {b.kind for b in readme} == {"python", "shell"}, [b.id for b in readme]
    assert any("xtra.run_study" in b.code and "pl.col(" in b.code for b in readme)


def test_every_fence_names_its_language():
    """An unlabelled fence could hide an example from the runner: output is ```text, code says what it is."""
    bare = [b.id for b in ALL if not b.lang]
    assert not bare, f"fenced blocks without a language (write ```text for output): {bare}"


def test_every_skip_marker_gives_a_reason_and_marks_an_example():
    bad = [b.id for b in ALL if b.skip is not None and (len(b.skip) < 8 or not b.kind)]
    assert not bad, f"'<!-- not run: REASON -->' needs a reason and must sit right before a shell/Python fence: {bad}"
    for page in PAGES:  # a marker separated from its fence would leave the next example unmarked
        lines = page.read_text().splitlines()
        for n, line in enumerate(lines):
            if MARKER.match(line.strip()):
                nxt = next((x for x in lines[n + 1:] if x.strip()), "")
                assert FENCE.match(nxt), f"{page.relative_to(ROOT)}:{n + 1}: marker not followed by a fence"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """The examples' working directory, with ``my-images/``: 3 classes of small generated JPEGs."""
    from xtra.data.generate import make_imagefolder

    work = tmp_path_factory.mktemp("docs")
    make_imagefolder(work / "my-images", n_classes=3, train_per_class=8, val_per_class=2, mean_side=64)
    return work


@pytest.fixture(scope="session")
def smoke_study(workdir: Path) -> tuple[Path, str]:
    """ONE real smoke study (Ray, 2 tiny trials), made by the README example that makes it."""
    maker = next(b for b in SLOW if b.page.name == "README.md" and "study run block-size --preset smoke" in b.code)
    run_block(maker, workdir)
    assert (workdir / STUDY / "results.parquet").is_file(), f"{maker.id} did not write {STUDY}"
    return workdir / STUDY, maker.id


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "100"
    env.pop("XTRA_STUDY_DIR", None)
    return env


def _run(argv: list[str], cwd: Path, what: str = "") -> str:
    proc = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{what or argv} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def run_block(block: Block, cwd: Path) -> str:
    if block.kind == "python":
        if block.code.lstrip().startswith(">>>"):
            script = cwd / f"_example_{block.line}.txt"
            script.write_text(block.code)
            return _run([sys.executable, "-m", "doctest", "-o", "ELLIPSIS", "-o", "NORMALIZE_WHITESPACE",
                         str(script)], cwd, block.id)
        return _run([sys.executable, "-c", block.code], cwd, block.id)
    code = block.code
    if block.lang == "console":  # only the commands: lines after a '$ ' prompt
        code = "\n".join(x[2:] for x in code.splitlines() if x.startswith("$ ")) + "\n"
    return _run(["bash", "-e", "-o", "pipefail", "-c", code], cwd, block.id)


FAST = [b for b in RUNNABLE if not NEEDS_STUDY.search(b.code)]  # no study needed (still slow-marked)
SLOW = [b for b in RUNNABLE if NEEDS_STUDY.search(b.code)]


@pytest.mark.slow  # a few seconds each: every command imports torch
@pytest.mark.parametrize("block", FAST, ids=[b.id for b in FAST])
def test_example_runs(block: Block, workdir: Path):
    run_block(block, workdir)


@pytest.mark.slow
@pytest.mark.parametrize("block", SLOW, ids=[b.id for b in SLOW])
def test_example_on_a_study_runs(block: Block, workdir: Path, smoke_study: tuple[Path, str]):
    if block.id != smoke_study[1]:  # the block that made the study ran in the fixture
        run_block(block, workdir)


def test_the_runner_catches_a_wrong_example(tmp_path: Path):
    """The runner fails on a failing command and on a doctest whose shown output is wrong."""
    page = tmp_path / "page.md"
    page.write_text("```bash\nfalse\necho never\n```\n\n```python\n>>> 1 + 1\n3\n```\n\n"
                    "<!-- not run: needs a GPU, which this machine lacks -->\n```bash\nexit 1\n```\n")
    shell, doc, skipped = blocks(page)
    assert skipped.skip == "needs a GPU, which this machine lacks" and shell.skip is None
    for b in (shell, doc):
        with pytest.raises(AssertionError):
            run_block(b, tmp_path)
