"""A study directory written by the release before this redesign (main at 3cf7ad7: `xtra study run
block-size --preset smoke`, run with that release's code) resumes under this one with nothing rerun.

The fixture is that directory as written, less the bulky files a finished study does not need to be
reused: its checkpoints and Ray Tune's experiment state (``run-1/``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from xtra.cli.main import app

OLD = Path(__file__).parent / "fixtures" / "study-3cf7ad7"


def test_a_study_of_the_previous_release_reruns_nothing(tmp_path: Path) -> None:
    study = tmp_path / "old"
    shutil.copytree(OLD, study)
    before = {p.relative_to(study): p.read_bytes() for p in (study / "trials").rglob("trial.json")}
    rows = pl.read_parquet(OLD / "results.parquet").sort("config_hash")
    result = CliRunner().invoke(app, ["study", "run", str(study), "--no-report", "--logger", "none"])
    assert result.exit_code == 0, result.output
    assert "2 finished (ran 0, reused 2 finished)" in " ".join(result.output.split())
    after = {p.relative_to(study): p.read_bytes() for p in (study / "trials").rglob("trial.json")}
    assert after == before and len(after) == 2
    again = pl.read_parquet(study / "results.parquet").sort("config_hash")
    assert again["config_hash"].to_list() == rows["config_hash"].to_list()
    assert again["linear_top1"].to_list() == rows["linear_top1"].to_list()
    assert again["status"].to_list() == ["finished", "finished"]


def test_the_study_file_run_into_an_earlier_directory_keeps_its_rules(tmp_path: Path) -> None:
    """`xtra study run block-size --preset smoke --out OLD` (the study file, not the directory) reruns
    nothing either: the directory's trials were trained before the official init and weight decay
    (xtra.config.LEGACY_VALUES), and it keeps those rules; --set naming the other rule is refused."""
    study = tmp_path / "old"
    shutil.copytree(OLD, study)
    result = CliRunner().invoke(app, ["study", "run", "block-size", "--preset", "smoke", "--out", str(study),
                                      "--no-report", "--logger", "none"])
    assert result.exit_code == 0, result.output
    assert "2 finished (ran 0, reused 2 finished)" in " ".join(result.output.split())
    written = (study / "study.toml").read_text()
    assert '"model.patch_init" = "xavier"' in written and '"pretrain.decay_positions" = false' in written
    result = CliRunner().invoke(app, ["study", "run", "block-size", "--preset", "smoke", "--out", str(study),
                                      "--set", "model.patch_init=kaiming", "--no-report", "--logger", "none"])
    assert result.exit_code != 0 and "model.patch_init='xavier'" in " ".join(result.output.split())
