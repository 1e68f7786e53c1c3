"""What a study run asks before it starts is decided once, in the library: the CLI and the Python API
refuse the same studies with the same line, and name options the same way but for their spelling."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import xtra
from xtra.cli.main import app
from xtra.reports.build import build_report, check_options
from xtra.studies.load import load_study
from xtra.studies.policy import CONFIRM_GPU_HOURS, confirm_cost, default_out, estimated_gpu_hours
from xtra.studies.spec import StudyError

HUGE = ["pretrain.samples=1e15"]


def test_a_study_above_the_threshold_is_refused_by_the_api_as_by_the_cli(tmp_path: Path) -> None:
    study = load_study("block-size", preset="smoke", sets=HUGE)
    assert estimated_gpu_hours(study) > CONFIRM_GPU_HOURS
    with pytest.raises(StudyError) as api:
        xtra.run_study("block-size", tmp_path / "api", preset="smoke", sets=HUGE)
    res = CliRunner().invoke(app, ["study", "run", "block-size", "-p", "smoke", "--set", HUGE[0],
                                   "--out", str(tmp_path / "cli")])
    assert res.exit_code == 2
    assert " ".join(res.output.split()) == f"error: {api.value}"  # the same line, from the same place
    assert "--yes (Python: yes=True)" in str(api.value)
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()  # refused before any write
    assert confirm_cost(study, yes=True).startswith("running an estimated ")
    assert confirm_cost(load_study("block-size", preset="smoke"), yes=False) is None


def test_the_default_study_directory_is_one_rule(tmp_path: Path) -> None:
    study = load_study("block-size", preset="smoke")
    assert default_out(study) == Path("runs/studies/block-size-smoke")
    own = tmp_path / "mine.toml"
    own.write_text('name = "mine"\n[axes]\n"model.block_size" = [1, 2]\n')
    assert default_out(load_study(own)) == Path("runs/studies/mine")  # no preset, no suffix
    assert default_out(study, tmp_path) == tmp_path  # an existing study directory runs in place


@pytest.mark.parametrize("kwargs, api_line, cli_args, cli_line", [
    ({"images": "gif"}, "images='gif': expected one of png, svg", ["--images", "gif"], "--images 'gif': expected"),
    ({"plotlyjs": "local"}, "plotlyjs='local': expected one of inline, cdn", ["--plotlyjs", "local"],
     "--plotlyjs 'local': expected"),
    ({"n_boot": -1}, "n_boot=-1: expected an integer >= 0", ["--n-boot", "-1"], "--n-boot -1: expected"),
])
def test_report_options_are_checked_in_one_place(tmp_path: Path, kwargs: dict, api_line: str, cli_args: list[str],
                                                 cli_line: str) -> None:
    options = {"images": None, "plotlyjs": "inline", "n_boot": 0, **kwargs}
    with pytest.raises(ValueError, match="^" + api_line.replace("(", r"\(")):
        check_options(**options)
    with pytest.raises(ValueError, match=api_line.split(":")[0]):
        build_report(tmp_path, **options)  # before the study directory is even looked at
    res = CliRunner().invoke(app, ["report", "build", str(tmp_path), *cli_args])
    assert res.exit_code == 2 and cli_line in " ".join(res.output.split()), res.output


def test_a_halving_search_is_confirmed_on_what_its_rungs_train() -> None:
    from xtra.studies.halving import planned_samples

    study = load_study("lr-halving", preset="cpu")
    plan = planned_samples(study)
    assert estimated_gpu_hours(study) == pytest.approx(plan["gpu_hours"]) and plan["gpu_hours"] < plan["grid_gpu_hours"]
