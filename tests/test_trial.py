"""run_trial: pretrain then probe in one directory; a finished trial is returned, not rerun."""

import json

from xtra.config import TrialConfig, override
from xtra.trial import run_trial


def test_run_trial_end_to_end_and_idempotent(tmp_path):
    cfg = override(TrialConfig(), {
        "model.img_size": 32, "model.patch_size": 8, "model.width": 32, "model.depth": 2, "model.num_heads": 2,
        "model.proj_hidden": 64, "model.pred_width": 32, "model.pred_depth": 1, "model.pred_num_heads": 2,
        "model.head_hidden": 64, "model.block_size": 2, "data.limit_train": 2000, "pretrain.samples": 512,
        "pretrain.batch_size": 64, "pretrain.warmup_samples": 64, "probe.epochs": 2, "probe.lrs": [1e-2, 1e-1]})
    events = []
    row = run_trial(cfg, tmp_path, report=events.append)
    assert row["status"] == "finished" and row["config_hash"] == cfg.config_hash()
    assert row["samples_seen"] == 512 and row["linear_top1"] > 0.3 and row["attentive_top1"] > 0.1
    assert row["linear_best_lr"] in (1e-2, 1e-1)
    assert {e["kind"] for e in events} >= {"progress", "checkpoint", "probe"}
    assert json.loads((tmp_path / "trial.json").read_text()) == row
    starts = (tmp_path / "log.txt").read_text().count("start")
    assert run_trial(cfg, tmp_path) == row
    assert (tmp_path / "log.txt").read_text().count("start") == starts  # not rerun
