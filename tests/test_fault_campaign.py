"""The fault campaign (`xtra bench --sections faults`): its checks catch what they promise to catch, and
its short size (one fault of each kind a study rides out or resumes from, on a real two-node Ray cluster
with the study in S3 on the local server) loses no trial, finishes none twice and changes no result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from xtra import trialdir as td
from xtra.studies import fault_campaign as fc
from xtra.studies import fault_checks as checks

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _trial(run_dir: Path, weight: float, wall_s: float) -> Path:
    """A trial directory's files as a trial writes them (result, metrics, a probe, a checkpoint)."""
    (run_dir / td.PROBES).mkdir(parents=True)
    td.write_result(run_dir, {"status": "finished", "linear_top1": 0.5, "wall_s": wall_s, "images_per_s": 1 / wall_s})
    td.write_metrics(run_dir, [{"samples_seen": 128, "loss": 0.9, "wall_s": wall_s}])
    (run_dir / td.PROBES / "p.json").write_text(json.dumps({"rows": [{"top1": 0.5, "wall_s": wall_s}]}))
    torch.save({"model": {"w": torch.full((3,), weight)}, "optimizer": {"state": {}}, "step": 2, "samples_seen": 128,
                "wall_s": wall_s}, run_dir / td.CHECKPOINT)
    return run_dir


def test_trials_differing_only_in_timings_are_equal_and_a_changed_weight_is_found(tmp_path: Path) -> None:
    ref = _trial(tmp_path / "ref", 1.0, wall_s=3.0)
    assert checks.trial_differences(_trial(tmp_path / "same", 1.0, wall_s=7.5), ref) == []
    other = _trial(tmp_path / "other", 1.0, wall_s=3.0)
    torch.save({"model": {"w": torch.tensor([1.0, 1.0, 1.0 + 2**-20])}, "optimizer": {"state": {}}, "step": 2,
                "samples_seen": 128}, other / td.CHECKPOINT)
    td.write_metrics(other, [{"samples_seen": 128, "loss": 0.90001, "wall_s": 3.0}])
    assert checks.trial_differences(other, ref) == [td.METRICS, "checkpoint.pt.model.w"]


def test_work_lost_is_what_a_hit_trial_had_logged_past_the_checkpoint_it_restarted_from(tmp_path: Path) -> None:
    run_dir = td.path(tmp_path, "abc")
    run_dir.mkdir(parents=True)
    fault_time = 1_800_000_000.0
    stamp = lambda t: __import__("time").strftime("%Y-%m-%d %H:%M:%S", __import__("time").localtime(t))  # noqa: E731
    for event in ({"event": "start", "time": stamp(fault_time - 60), "checkpoint_samples": None},
                  {"event": "start", "time": stamp(fault_time + 5), "checkpoint_samples": 512},
                  {"event": "start", "time": stamp(fault_time + 90), "checkpoint_samples": 768}):
        td.append_jsonl(run_dir / td.ATTEMPTS, event)
    faults = [{"time": fault_time, "hit": [{"trial": "abc", "samples": 640}]}, {"time": fault_time, "hit": []}]
    checks.work_lost(faults, tmp_path)
    assert [f["lost_samples"] for f in faults] == [128, 0]


def test_the_schedule_is_the_seeds() -> None:
    seg = fc.FULL_SEGMENTS[0]
    kinds, weights = fc._kinds_for(seg, fc.Schedule(seed=3))
    assert "storage_outage" not in kinds and set(kinds) == set(fc.KINDS) - {"storage_outage"}  # a local study
    draw = lambda seed: [fc.random.Random(seed).choices(kinds, weights)[0] for _ in range(5)]  # noqa: E731
    assert draw(3) == draw(3)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")
def test_a_short_fault_campaign_loses_nothing_and_changes_no_result(tmp_path: Path) -> None:
    pytest.importorskip("moto")
    result = fc.run_campaign(0, quick=True, root=tmp_path)
    assert {k: n for k, n in result["faults_per_kind"].items() if n} == {k: 1 for k in fc.QUICK_ORDER}, result
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["left_running"] == 0, result
    assert result["compared"] == result["trials"] == 2 and result["different"] == 0, result["segments"]
    assert result["resumes"] >= 2, result  # after the SIGTERM and the SIGKILL of the driver
    assert not result["problems"] and not result["violations"], result
    assert fc.passed(result)
