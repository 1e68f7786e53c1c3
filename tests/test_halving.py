"""Successive halving whose rungs are wsd cooldown branches: validation, rungs and cost, the plan rung by
rung, and a real driver killed in the middle of a rung that resumes with nothing finished rerun."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from drivers import kill_when, starts, study_process
from typer.testing import CliRunner

from xtra import studydir as st
from xtra import trialdir as td
from xtra.cli.study import app
from xtra.schedule import trunk_identity
from xtra.studies import halving
from xtra.studies.load import load_study
from xtra.studies.plan import make_plan
from xtra.studies.spec import StudyError

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _error(**sets: object) -> str:
    with pytest.raises(StudyError) as err:
        load_study("lr-halving", preset="cpu", sets=sets)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_bad_halving_searches_are_one_line_errors() -> None:
    assert "search.eta=1: must be an int from 2 to 100" in _error(**{"search.eta": 1})
    assert "budgets must increase" in _error(**{"search.rungs": [10000, 3750, 30000]})
    assert "the last rung must be the full budget, pretrain.samples=30000" in _error(**{"search.rungs": [3750, 10000]})
    assert "rung 1000 branches at 768 samples, which must be > 0, >= the largest warmup (2500)" in _error(
        **{"search.rungs": [1000, 30000]})
    assert "pretrain.schedule=\"cosine\": a halving search's rungs are wsd cooldown branches" in _error(
        **{"pretrain.schedule": "cosine"})
    assert "search.asha=true: a halving search stops configurations at its own rungs" in _error(**{"search.asha": True})
    assert "search.kind=\"hyperband\": unknown search (allowed: \"optuna\", \"halving\")" in _error(
        **{"search.kind": "hyperband"})
    assert "sampler = \"grid\" needs every key to be a choice" in _error(
        **{"search.space.pretrain.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}})
    assert "search.space.pretrain.samples: a halving search sets pretrain.samples itself" in _error(
        **{"search.space.pretrain.samples": {"type": "choice", "values": [20000, 30000]}})
    with pytest.raises(StudyError, match=r"search.eta: only a halving search takes eta"):
        load_study("lr-search", preset="smoke", sets={"search.eta": 3})


def test_rungs_sizes_and_planned_samples() -> None:
    study = load_study("lr-halving", preset="cpu")
    assert halving.rung_budgets(study) == (3750, 10000, 30000) and halving.rung_sizes(study) == (9, 3, 1)
    # default rungs: pretrain.samples / eta^i, as many as 9 configurations allow, whole batches
    default = load_study("lr-halving", preset="cpu", sets={"search.rungs": [], "search.eta": 3})
    assert halving.rung_budgets(default) == (3328, 9984, 30000)
    # each rung: its configurations from the previous branch point (multiple of 128) to the budget
    cost = halving.planned_samples(study)
    assert cost["samples"] == 9 * 3750 + 3 * (10000 - 2944) + 1 * (30000 - 7936)
    assert cost["grid_samples"] == 9 * 30000 and cost["trials"] == 13
    assert cost["gpu_hours"] / cost["grid_gpu_hours"] == pytest.approx(cost["samples"] / cost["grid_samples"])
    res = CliRunner().invoke(app, ["show", "lr-halving"])
    assert res.exit_code == 0, res.output
    assert "x9 (halving)" in res.output and "planned 76,982 samples" in " ".join(res.output.split())


def test_configurations_from_the_grid_or_optuna() -> None:
    grid = halving.propose(load_study("lr-halving", preset="cpu"))
    assert len(grid) == 9 and grid[0] == {"pretrain.lr": 3e-4, "pretrain.warmup_samples": 0}
    tpe = load_study("lr-halving", preset="cpu", sets={
        "search.sampler": "tpe", "search.num_samples": 6,
        "search.space.pretrain.lr": {"type": "loguniform", "low": 1e-4, "high": 3e-3},
        "search.space.model.width": {"type": "choice", "values": [96, 192]}})
    drawn = halving.propose(tpe)
    assert drawn == halving.propose(tpe), "the same seed proposes the same configurations"
    assert len({json.dumps(d, sort_keys=True) for d in drawn}) == 6
    assert all(1e-4 <= d["pretrain.lr"] <= 3e-3 and d["model.width"] in (96, 192) for d in drawn)


def test_promotion_ranks_failures_last_and_breaks_ties_by_order() -> None:
    entries = [{"config": 0, "value": 0.5}, {"config": 1, "value": None}, {"config": 2, "value": 0.7},
               {"config": 3, "value": 0.5}]
    assert halving.promote(entries, 2, "max") == [0, 2]
    assert halving.promote(entries, 2, "min") == [0, 3]
    assert halving.promote(entries, 4, "max") == [0, 1, 2, 3]


def test_the_first_rung_is_a_grid_of_wsd_branches(tmp_path: Path) -> None:
    study = load_study("lr-halving", preset="cpu")
    plan = make_plan(study, tmp_path)
    assert plan.rung == 0 and len(plan.pending) == 9 and len(plan.trunks) == 9
    assert {s.config.pretrain.samples for s in plan.pending} == {3750}
    assert {j.start for j in plan.branches.values()} == {2944}
    assert {j.config.pretrain.samples for j in plan.trunks} == {2944}
    assert plan.ladder["configs"] == halving.propose(study) and plan.ladder["rungs"] == []
    # a ladder of another search is refused
    st.write_ladder(tmp_path, {**plan.ladder, "search": {**plan.ladder["search"], "eta": 2}})
    with pytest.raises(StudyError, match="holds the rung ladder of another halving search"):
        make_plan(study, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")
def test_a_driver_killed_mid_rung_resumes_with_nothing_finished_rerun(tmp_path: Path) -> None:
    study_dir = tmp_path / "halving"
    sets = ["--set", "search.eta=3", "--set", "search.rungs=[256,512]",
            "--set", 'search.space.pretrain.lr={type="choice",values=[3e-4,3e-3,3e-2]}']
    study = load_study("lr-halving", preset="smoke", sets={"search.eta": 3, "search.rungs": [256, 512], **{
        "search.space.pretrain.lr": {"type": "choice", "values": [3e-4, 3e-3, 3e-2]}}})
    first = [halving.trial_spec(study, i, c, 256) for i, c in enumerate(halving.propose(study))]
    finished_at_kill: list[str] = []

    def mid_rung() -> bool:
        finished_at_kill[:] = [s.config_hash for s in first if td.read_result(td.path(study_dir, s.config_hash))]
        return 0 < len(finished_at_kill) < len(first)

    # SIGKILL the driver while the first rung has finished branches and unfinished ones
    kill_when(study_process("run", "lr-halving", "--preset", "smoke", *sets, "--out", str(study_dir)), mid_rung,
              timeout=400, what="a rung with a finished branch", every=0.02)
    assert st.read_ladder(study_dir)["rungs"] == []
    resumed = study_process("resume", str(study_dir))
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out

    for h in finished_at_kill:
        assert starts(td.path(study_dir, h)) == 1, "a finished branch was rerun"
    ladder = st.read_ladder(study_dir)
    [rung0, rung1] = ladder["rungs"]
    values = {e["config"]: e["value"] for e in rung0["entries"]}
    assert rung0["promoted"] == [max(values, key=lambda i: (values[i], -i))]
    [winner] = rung1["promoted"]
    assert rung1["entries"][0]["config"] == winner == rung0["promoted"][0]
    df = pl.read_parquet(study_dir / "results.parquet")
    assert df.height == 4 and set(df["status"]) == {"finished"}, df
    assert sorted(df["samples_seen"].to_list()) == [256, 256, 256, 512]
    # the winner's trunk went on from the first rung's branch point: one trunk per configuration
    final = halving.trial_spec(study, winner, ladder["configs"][winner], 512)
    trunk = td.path(study_dir, trunk_identity(final.config))
    assert td.read_result(trunk)["samples_seen"] == 384 and 192 in td.kept_samples(trunk)
    row = df.filter(pl.col("config_hash") == final.config_hash).to_dicts()[0]
    assert row["trunk"] == trunk.name and row["branch_start"] == 384

    # the ladder decides: re-planning reproduces it, and a stored promotion is followed as stored
    again = make_plan(study, study_dir)
    assert again.empty and again.ladder == ladder
    other = next(i for i in range(3) if i != winner)
    st.write_ladder(study_dir, {**ladder, "rungs": [{**rung0, "promoted": [other]}]})
    replanned = make_plan(study, study_dir)
    assert replanned.rung == 1 and [s.params for s in replanned.pending] == [ladder["configs"][other]]

    # the report draws the ladder
    from xtra.reports.halving import ladder_panels

    [panel] = ladder_panels(study_dir)
    assert len(panel.figure.data) == 3 and len(panel.tables[0].rows) == 3 + 0


def test_an_optuna_search_walks_every_combination_with_the_grid_sampler(tmp_path: Path) -> None:
    from xtra.studies.ray.tuner import _optuna_searcher, _param_space

    study = load_study("lr-search", preset="smoke", sets={
        "search.sampler": "grid", "search.num_samples": 4,
        "search.space.pretrain.lr": {"type": "choice", "values": [1e-3, 3e-3]},
        "search.space.pretrain.warmup_samples": {"type": "choice", "values": [0, 64]}})
    space, count = _param_space(make_plan(study, tmp_path), tmp_path, str(tmp_path))
    searcher = _optuna_searcher(study, tmp_path, ())
    assert count == 4 and searcher.set_search_properties(study.search.metric, study.search.mode, space)
    drawn = [searcher.suggest(f"t{i}")["params"] for i in range(count)]
    assert sorted((p["pretrain.lr"], p["pretrain.warmup_samples"]) for p in drawn) == [
        (1e-3, 0), (1e-3, 64), (3e-3, 0), (3e-3, 64)]
