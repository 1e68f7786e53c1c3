"""Budget sweeps under warmup-stable-decay: the plan shares one trunk per group, Ray runs trunk and
branches, a kill -9 of the driver loses nothing, and a budget added later costs only its cooldown."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from drivers import kill_when, starts, study_process

from xtra import trialdir as td
from xtra.schedule import trunk_identity
from xtra.studies.load import load_study
from xtra.studies.plan import make_plan
from xtra.trial import run_trial

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
WSD = ["--set", 'pretrain.schedule="wsd"']
# train_loss is the mean over the last logging window, and a kept checkpoint forces a log row, so it
# is not compared; the model itself (weights, val loss, probes) is.
METRICS = ("samples_seen", "val_loss", "linear_top1", "attentive_top1", "linear_best_lr")


def _study(*sets: str, k: tuple[int, ...] = (1, 2), budgets: tuple[int, ...] = (256, 512)):
    return load_study("sample-budget", preset="smoke", sets={"pretrain.schedule": "wsd",
                                                             "axes.model.block_size": list(k),
                                                             "axes.pretrain.samples": list(budgets)})


def test_the_plan_shares_one_trunk_per_group_and_counts_the_samples(tmp_path: Path) -> None:
    study = _study()
    plan = make_plan(study, tmp_path)
    assert len(plan.trunks) == 2 and len(plan.branches) == 4  # k = 1 and k = 2, two budgets each
    for job in plan.trunks:
        assert job.config.pretrain.cooldown_fraction == 0 and job.config.pretrain.samples == 384  # 512's branch point
        assert {192, 384} <= set(job.keep_at)  # every branch point is kept
    starts = sorted(b.start for b in plan.branches.values())
    assert starts == [192, 192, 384, 384]
    # 2 x (trunk 384 + cooldowns 64 + 128) = 1152 trained, vs 2 x (256 + 512) = 1536 as separate runs
    assert plan.samples == {"trained": 1152, "cosine_equivalent": 1536}
    cosine = load_study("sample-budget", preset="smoke")
    assert make_plan(cosine, tmp_path).trunks == ()


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")
def test_trunk_and_branches_survive_a_kill_and_a_new_budget_costs_its_cooldown(tmp_path: Path) -> None:
    study_dir = tmp_path / "wsd"
    args = ["run", "sample-budget", "--preset", "smoke", *WSD, "--set", "axes.model.block_size=[1]",
            "--out", str(study_dir)]
    study = _study(k=(1,))
    small, large = study.expand()
    trunk_dir = td.path(study_dir, trunk_identity(small.config))

    done: list = []

    def one_branch_done() -> bool:
        done[:] = [s for s in (small, large) if td.read_result(td.path(study_dir, s.config_hash))]
        return len(done) == 1

    # SIGKILL the driver once one branch is finished and the other is not
    kill_when(study_process(*args), one_branch_done, timeout=300, what="one finished branch", every=0.02)
    [finished] = done
    resumed = study_process("resume", str(study_dir))
    out, _ = resumed.communicate(timeout=400)
    assert resumed.returncode == 0, out
    df = pl.read_parquet(study_dir / "results.parquet")
    assert df.height == 2 and set(df["status"]) == {"finished"}, df
    assert starts(td.path(study_dir, finished.config_hash)) == 1, "a finished branch was rerun"
    assert starts(trunk_dir) <= 2 and td.read_result(trunk_dir)["role"] == "trunk"
    rows = {r["config_hash"]: r for r in df.to_dicts()}
    assert {r["trunk"] for r in rows.values()} == {trunk_dir.name}
    assert [rows[s.config_hash]["branch_start"] for s in (small, large)] == [192, 384]

    # each branch is bitwise the wsd run of its budget trained alone (one thread, like the Ray trial)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone_rows = {s.config_hash: run_trial(s.config, tmp_path / "alone" / s.config_hash) for s in (small, large)}
    finally:
        torch.set_num_threads(threads)
    for spec in (small, large):
        alone = alone_rows[spec.config_hash]
        for key in METRICS:
            assert rows[spec.config_hash][key] == alone[key], (spec.trial_id, key)
        mine = torch.load(td.path(study_dir, spec.config_hash) / td.CHECKPOINT, weights_only=False)["model"]
        theirs = torch.load(tmp_path / "alone" / spec.config_hash / td.CHECKPOINT, weights_only=False)["model"]
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), spec.trial_id

    # One more run adds a wsd budget below the trunk's reach and the same budgets under cosine beside them.
    # The new branch starts at a kept trunk checkpoint and costs only its cooldown; the trunk does not rerun.
    both = study_process(*args[:-2], "--set", "axes.pretrain.samples=[256,384,512]", "--set",
                 'axes.pretrain.schedule=["cosine","wsd"]', "--out", str(study_dir))
    out, _ = both.communicate(timeout=400)
    assert both.returncode == 0, out
    assert "(ran 4, reused 2 finished)" in out, out
    df = pl.read_parquet(study_dir / "results.parquet")
    new = df.filter((pl.col("pretrain.samples") == 384) & (pl.col("pretrain.schedule") == "wsd")).row(0, named=True)
    assert new["branch_start"] == 256 and new["samples_trained"] == 128 and new["samples_seen"] == 384
    assert starts(trunk_dir) <= 2, "the trunk ran again"
    assert json.loads((study_dir / "runs.json").read_text())[-1].get("trunks") == []

    # the report states what the wsd trials trained (one trunk to 384, cooldowns from 192, 256 and 384)
    # and compares the schedules per budget
    from xtra.reports.build import build_report

    summary = (build_report(study_dir, n_boot=0).parent / "summary.md").read_text()
    wsd = 384 + (256 - 192) + (384 - 256) + (512 - 384)
    budgets = 256 + 384 + 512
    assert f"wsd: 3 trial(s) branched off 1 trunk(s) (and 3 ran alone): {wsd + budgets:,} samples trained where " \
           f"separate runs would train {2 * budgets:,}" in summary, summary
    table = summary[summary.index("### wsd vs cosine per budget"):]
    assert all(f"| {budget} |" in table for budget in (256, 384, 512)), table
