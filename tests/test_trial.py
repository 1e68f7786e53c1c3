"""run_trial: pretrain then probe in one directory; a finished trial is returned, not rerun."""

import json
import shutil

import pytest
import torch

from xtra import trialdir as td
from xtra.config import TrialConfig
from xtra.model import XTRA, block_crops
from xtra.overrides import override
from xtra.pictures import predicted_images, study_pictures
from xtra.pretrain import pretrain
from xtra.trial import _probe, keep_at, run_trial

TINY = {"model.img_size": 32, "model.patch_size": 8, "model.width": 32, "model.depth": 2, "model.num_heads": 2,
        "model.proj_hidden": 64, "model.pred_width": 32, "model.pred_depth": 1, "model.pred_num_heads": 2,
        "model.head_hidden": 64, "model.block_size": 2, "data.limit_train": 2000, "pretrain.samples": 512,
        "pretrain.batch_size": 64, "pretrain.warmup_samples": 64, "probe.epochs": 2, "probe.lrs": [1e-2, 1e-1]}


def test_run_trial_end_to_end_and_idempotent(tmp_path):
    cfg = override(TrialConfig(), TINY)
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


class Interrupted(Exception):
    pass


def test_an_interrupted_probe_resumes_at_the_checkpoint_it_stopped_at(tmp_path):
    """Probing along the way keeps each checkpoint's rows as they finish: a probe stopped at its
    second checkpoint probes only that one again, and its rows equal an uninterrupted probe's."""
    cfg = override(TrialConfig(), {**TINY, "probe.points": 2, "probe.limit_train": 500})
    first = tmp_path / "first"
    pretrain(cfg.model, cfg.data, cfg.pretrain, first, seed=cfg.seed, keep_at=keep_at(cfg))
    shutil.copytree(first, tmp_path / "whole")
    whole = _probe(cfg, tmp_path / "whole", log=lambda msg: None)
    assert [(r["samples"], r["kind"]) for r in whole] == [(256, "linear"), (512, "linear"), (512, "attentive")]

    def stop_at_the_end(msg: str) -> None:
        if msg.startswith("probing the checkpoint at 512 samples"):
            raise Interrupted

    with pytest.raises(Interrupted):
        _probe(cfg, first, log=stop_at_the_end)
    assert not td.probe_path(first, cfg.probe_hash()).exists()
    heard: list[str] = []
    rows = _probe(cfg, first, log=heard.append)
    assert any(m.startswith("probe resumed: 1 checkpoint x dataset point") for m in heard)
    assert [m for m in heard if m.startswith("probing the checkpoint")] == [
        "probing the checkpoint at 512 samples on fashion-mnist (linear, attentive)"]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_s", "encode_s", "head_s")} for r in rows]  # noqa: E731
    assert strip(rows) == strip(whole)
    assert td.probe_rows(first, cfg.probe_hash()) == rows
    assert not td.probe_path(first, cfg.probe_hash()).with_suffix(".partial.json").exists()


def test_a_new_probe_protocol_probes_again_with_zero_pretraining_steps(tmp_path):
    """The same pretraining under another probe config: the checkpoint and the metrics are untouched,
    the new protocol's results are kept beside the old, and the trial says it is probing."""
    cfg = override(TrialConfig(), {**TINY, "probe.kinds": ["linear"], "probe.limit_train": 500})
    run_dir = tmp_path / "trials" / cfg.config_hash()
    first = run_trial(cfg, run_dir)
    metrics, checkpoint = (run_dir / td.METRICS).read_bytes(), (run_dir / td.CHECKPOINT).read_bytes()
    again = override(cfg, {"probe.epochs": 3})
    assert again.config_hash() == cfg.config_hash() and again.probe_hash() != cfg.probe_hash()
    events = []
    row = run_trial(again, run_dir, report=events.append)
    assert [e["kind"] for e in events] == ["probing", "probe"]  # no progress, no checkpoint: no step ran
    assert (run_dir / td.METRICS).read_bytes() == metrics and (run_dir / td.CHECKPOINT).read_bytes() == checkpoint
    assert "pretraining reused (512 samples)" in (run_dir / td.LOG).read_text()
    assert row["probe_hash"] == again.probe_hash() and row["samples_seen"] == first["samples_seen"]
    assert td.probe_rows(run_dir, cfg.probe_hash()) and td.probe_rows(run_dir, again.probe_hash())
