"""run_trial: pretrain then probe in one directory; a finished trial is returned, not rerun."""

import json

import torch

from xtra.config import TrialConfig, override
from xtra.model import XTRA, block_crops
from xtra.pictures import predicted_images, study_pictures
from xtra.trial import run_trial


def test_run_trial_end_to_end_and_idempotent(tmp_path):
    cfg = override(TrialConfig(), {
        "model.img_size": 32, "model.patch_size": 8, "model.width": 32, "model.depth": 2, "model.num_heads": 2,
        "model.proj_hidden": 64, "model.pred_width": 32, "model.pred_depth": 1, "model.pred_num_heads": 2,
        "model.head_hidden": 64, "model.block_size": 2, "data.limit_train": 2000, "pretrain.samples": 512,
        "pretrain.batch_size": 64, "pretrain.warmup_samples": 64, "probe.epochs": 2, "probe.lrs": [1e-2, 1e-1]})
    events = []
    run_dir = tmp_path / "trials" / cfg.config_hash()
    row = run_trial(cfg, run_dir, report=events.append)
    assert row["status"] == "finished" and row["config_hash"] == cfg.config_hash()
    assert row["samples_seen"] == 512 and row["linear_top1"] > 0.3 and row["attentive_top1"] > 0.1
    assert row["linear_best_lr"] in (1e-2, 1e-1)
    assert {e["kind"] for e in events} >= {"progress", "checkpoint", "probe"}
    assert json.loads((run_dir / "trial.json").read_text()) == row
    starts = (run_dir / "log.txt").read_text().count("start")
    assert run_trial(cfg, run_dir) == row
    assert (run_dir / "log.txt").read_text().count("start") == starts  # not rerun
    [(k, picture)] = study_pictures(tmp_path)
    assert k == 2 and picture.ndim == 3 and picture.shape[2] == 3 and 0 <= picture.min() <= picture.max() <= 1


def test_predicted_images_keep_block_zero_and_replace_the_rest():
    cfg = override(TrialConfig(), {"model.block_size": 2}).model
    model = XTRA(cfg).eval()
    x = torch.randn(2, 1, 32, 32)
    pasted = predicted_images(model, x)
    assert pasted.shape == x.shape
    torch.testing.assert_close(block_crops(pasted, cfg)[:, 0], block_crops(x, cfg)[:, 0])
    assert not torch.allclose(block_crops(pasted, cfg)[:, 1:], block_crops(x, cfg)[:, 1:])
