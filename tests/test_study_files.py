"""A study file means what it says: its own `size` and `[base]` win over the shared presets, its own
presets win over both, and `xtra study show` lists each shared value not applied. Tested with a user's
study file outside the repository."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from xtra.cli.study import app
from xtra.studies.load import load_study

USER_STUDY = """
name = "mine"
description = "my own data and budget"
size = "cpu-m"
default_preset = "cpu"

[base]
"data.name" = "cifar10"
"pretrain.samples" = 100000
"pretrain.warmup_samples" = 5000

[axes]
"model.block_size" = [1, 2]
"""


def test_a_user_study_keeps_its_size_data_and_budget(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "mine.toml"
    path.parent.mkdir()
    path.write_text(USER_STUDY)
    for preset in (None, "cpu", "paper"):
        study = load_study(path, preset=preset)
        cfg = study.base_config()
        assert study.size == "cpu-m" and cfg.model.width == 192, preset
        assert cfg.data.name == "cifar10" and cfg.pretrain.samples == 100000, preset
    # what the shared preset still fills in (the study leaves it out), and what it did not apply
    cpu = load_study(path)
    assert cpu.preset == "cpu" and cpu.base_config().pretrain.batch_size == 128
    src, shared = cpu.source, "studies/_presets.toml: presets.cpu"
    assert cpu.kept == (
        f'size="cpu-m" from {src} kept ({shared}.size="cpu-s" not applied)',
        f'data.name="cifar10" from {src} [base] kept ({shared}.data.name="fashion-mnist" not applied)',
        f"pretrain.samples=100000 from {src} [base] kept ({shared}.pretrain.samples=30000 not applied)",
        f"pretrain.warmup_samples=5000 from {src} [base] kept ({shared}.pretrain.warmup_samples=3000 not applied)",
    )
    assert load_study(path, preset="paper").base_config().model.block_size == 4  # not set by the study: preset's
    out = CliRunner().invoke(app, ["show", str(path), "--preset", "paper"], terminal_width=200)
    assert out.exit_code == 0, out.output
    assert 'data.name="cifar10" from' in out.output
    assert 'presets.paper.data.name="imagefolder:/path/to/imagenet" not applied' in out.output


def test_the_study_s_own_preset_and_set_still_win(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(USER_STUDY + '\n[presets.cpu]\n"pretrain.samples" = 50000\nsize = "cpu-s"\n')
    study = load_study(path)
    assert study.size == "cpu-s" and study.base_config().pretrain.samples == 50000
    again = load_study(path, sets=["pretrain.samples=20000", "size='tiny'"])
    assert again.size == "tiny" and again.base_config().pretrain.samples == 20000
