"""The isoflop study: a `compute` axis expands into sizes on isoFLOP lines (D = C / F(N) from xtra's own
FLOPs per image, whole batches, checked to stay on the line), budgets of one size share a wsd trunk, bad
grids fail in one line, and `xtra study show` says how far each trial is from its line and whether the
grid supports the extrapolation test."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xtra.cli.study import app
from xtra.costs import flops_per_image
from xtra.schedule import plan_trunks
from xtra.studies.isoflop import MAX_OFF_LINE, nominal_budgets
from xtra.studies.isoflop_lines import lines
from xtra.studies.load import load_study
from xtra.studies.spec import StudyError


def test_cpu_preset_puts_every_size_on_every_line_in_whole_batches() -> None:
    study = load_study("isoflop", preset="cpu")
    budgets = nominal_budgets(study)
    assert len(budgets) >= 3
    specs = study.expand()
    widths = {s.config.model.width for s in specs}
    assert len(widths) >= 4 and {s.config.model.block_size for s in specs} == {1, 2}
    assert len(specs) == len(budgets) * len(widths) * 2
    for spec in specs:
        p = spec.config.pretrain
        assert p.samples % p.batch_size == 0
        compute = flops_per_image(spec.config.model) * p.samples
        nearest = min(budgets, key=lambda c: abs(math.log(compute / c)))
        assert abs(compute / nearest - 1) <= MAX_OFF_LINE
    for width in widths:  # each size gets one budget per line, fewer samples for a larger model on a line
        per = sorted({s.config.pretrain.samples for s in specs if s.config.model.width == width})
        assert len(per) == len(budgets)
    on_first = {s.config.model.width: s.config.pretrain.samples for s in specs if s.config.model.block_size == 1
                and abs(math.log(flops_per_image(s.config.model) * s.config.pretrain.samples / budgets[0])) < 0.1}
    assert [on_first[w] for w in sorted(on_first)] == sorted(on_first.values(), reverse=True)


def test_a_size_s_budgets_share_one_wsd_trunk() -> None:
    study = load_study("isoflop", preset="cpu")
    trunks = plan_trunks(study.trials())
    budgets = nominal_budgets(study)
    assert len(trunks) == len(study.trials()) // len(budgets)  # one per (size, k)
    assert all(len(t.branches) == len(budgets) for t in trunks)


def test_resolved_study_keeps_the_points(tmp_path: Path) -> None:
    study = load_study("isoflop", preset="cpu")
    (tmp_path / "study.toml").write_text(study.to_toml())
    again = load_study(tmp_path)
    assert [s.config_hash for s in again.expand()] == [s.config_hash for s in study.expand()]
    assert nominal_budgets(again) == []  # the lines are found again from the trials' own FLOPs
    assert any(line.startswith("isoFLOP line") for line in lines(again))


@pytest.mark.parametrize(("sets", "message"), [
    (["compute=[0]"], "compute=0: a compute budget must be a number of FLOPs > 0"),
    (["compute=[1e12, 1e12]"], "compute budgets repeat"),
    (["compute=[\"big\"]"], "compute=\"big\": a compute budget must be a number of FLOPs > 0"),
    (["compute=[1e10]", "pretrain.warmup_samples=64"], "off the line by"),  # rounding to whole batches moves C too far
    (["axes.width=[{ \"pretrain.lr\" = 1e-3 }]"], "needs a size axis"),
])
def test_a_grid_off_its_lines_fails_in_one_line(sets: list[str], message: str) -> None:
    with pytest.raises(StudyError) as err:
        load_study("isoflop", preset="cpu", sets=sets)
    text = str(err.value)
    assert "\n" not in text and text.startswith("studies/isoflop.toml")
    if message == "off the line by":
        assert "off the line" in text and "allowed: within 5%" in text
    else:
        assert message in text


def test_warmup_past_a_run_is_refused() -> None:
    with pytest.raises(StudyError, match=r"not past pretrain.warmup_samples=20,000"):
        load_study("isoflop", preset="cpu", sets=["pretrain.warmup_samples=20000"])


def test_show_prints_each_line_and_the_extrapolation_support() -> None:
    result = CliRunner().invoke(app, ["show", "isoflop", "--preset", "cpu"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.count("isoFLOP line C = ") == 3
    assert "isoFLOP line C = 2e+12 FLOPs: 5 sizes" in text and "of it (samples rounded to whole batches" in text
    assert "extrapolation without the largest N: refit on 12 design points, predicts the 3 left out" in text
    smoke = CliRunner().invoke(app, ["show", "isoflop", "--preset", "smoke"])
    assert smoke.exit_code == 0, smoke.output
    assert "extrapolation without the largest N: cannot be tested" in " ".join(smoke.output.split())
    paper = CliRunner().invoke(app, ["show", "isoflop", "--preset", "paper"])
    assert paper.exit_code == 0 and "total" in paper.output
    assert "isoFLOP line C = 1e+19" in " ".join(paper.output.split())
