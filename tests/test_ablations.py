"""The official ablation axes (XTRA's config/ablations/) as the studies' `paper` presets, their cpu
analogues, the official pseudo-random block order, the vit-h/14 defaults of the official run, and the
scaling presets' points: what `xtra study show <study> --preset paper` lists."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from xtra.cli.study import app
from xtra.config import model_config
from xtra.costs import n_params_encoder
from xtra.model import _block_order, pseudo_random_orders
from xtra.studies.load import load_study


def grid(name: str, preset: str, *keys: str) -> list[tuple]:
    """The distinct values of `keys` over a study's trials, in trial order."""
    out: list[tuple] = []
    for spec in load_study(name, preset=preset).expand():
        cfg = spec.config
        row = tuple(getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in keys)
        if row not in out:
            out.append(row)
    return out


def test_paper_presets_are_the_official_grids() -> None:
    # predictor width 0.25x-1.0x of ViT-B's 768 with 6 heads fixed (config/ablations/predictor/width_*)
    assert grid("predictor-width", "paper", "model.pred_width", "model.pred_num_heads") == [
        (192, 6), (384, 6), (576, 6), (768, 6)]
    assert grid("predictor-depth", "paper", "model.pred_depth") == [(1,), (2,), (4,), (8,), (16,)]
    # 1x and 2x {16x16, 32x32, 64x64} on 16 px patches: next_heads crossed with k = 1, 2, 4 (2x16x16, k = 1
    # with two heads, is the multi-token control)
    assert sorted(grid("multi-token", "paper", "model.next_heads", "model.block_size")) == [
        (1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (2, 4)]
    # resolution at 224 px: patch 14 with k 1, 2, 4 (blocks of 14, 28, 56 px), patch 16 with k 1, 2
    assert grid("resolution", "paper", "model.img_size", "model.patch_size", "model.block_size") == [
        (224, 14, 1), (224, 14, 2), (224, 14, 4), (224, 16, 1), (224, 16, 2)]
    assert grid("order", "paper", "model.order") == [("raster",), ("pseudo-random",)]


@pytest.mark.parametrize("name", ["predictor-width", "predictor-depth", "multi-token", "resolution", "order"])
def test_study_show_lists_the_paper_grid(name: str) -> None:
    out = CliRunner().invoke(app, ["show", name, "--preset", "paper"], terminal_width=200)
    assert out.exit_code == 0, out.output
    n = len(load_study(name, preset="paper").expand())
    assert f"{name}: {n} trial(s)" in out.output


def test_cpu_analogues_load() -> None:
    assert grid("predictor-width", "cpu", "model.pred_width", "model.pred_num_heads") == [
        (24, 3), (48, 3), (72, 3), (96, 3)]  # 0.25x-1.0x of cpu-s's 96, heads fixed
    assert sorted(grid("multi-token", "cpu", "model.next_heads", "model.block_size")) == [
        (1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (2, 4)]
    assert grid("resolution", "cpu", "model.patch_size", "model.block_size") == [
        (4, 1), (4, 2), (4, 4), (8, 1), (8, 2)]


def test_block_size_cpu_preset_gives_completed_budgets() -> None:
    """Each budget is a trial of its own (a wsd branch after its cooldown), not a probe point of one run."""
    specs = load_study("block-size", preset="cpu").expand()
    budgets = {(s.config.model.block_size, s.config.pretrain.samples) for s in specs}
    assert budgets == {(k, n) for k in (1, 2, 4) for n in (7500, 15000, 30000)}
    assert all(s.config.pretrain.schedule == "wsd" and s.config.probe.points == 0 for s in specs)


@pytest.mark.parametrize("preset", ["paper", "cpu"])
def test_scaling_presets_have_enough_distinct_points(preset: str) -> None:
    specs = load_study("scaling", preset=preset).expand()
    points = {(n_params_encoder(s.config.model), s.config.pretrain.samples) for s in specs}
    assert len(points) >= 12


def test_pseudo_random_orders_are_the_official_ones() -> None:
    """16 random permutations of 16 blocks, no two with a common prefix (distinct first blocks), the
    first one random too (the validation loss uses it; probes read raster order), fixed by the seed."""
    orders = pseudo_random_orders(16, 16, 0)
    assert orders.shape == (16, 16)
    assert all(sorted(o.tolist()) == list(range(16)) for o in orders)
    assert sorted(orders[:, 0].tolist()) == list(range(16))  # each order starts with its own block
    for i in range(16):
        for j in range(i):
            assert not any(torch.equal(orders[i, :n], orders[j, :n]) for n in range(1, 16))
    assert not torch.equal(orders[0], torch.arange(16))
    assert torch.equal(orders, pseudo_random_orders(16, 16, 0))
    assert not torch.equal(orders, pseudo_random_orders(16, 16, 1))
    cfg = model_config("cpu-s", block_size=2, order="pseudo-random")
    assert torch.equal(_block_order(cfg, 0), orders[0])
    with pytest.raises(ValueError, match="model.n_orders=16 exceeds the 4 blocks"):
        model_config("cpu-s", block_size=4, order="pseudo-random")


def test_vit_h_defaults_are_the_official_run() -> None:
    cfg = model_config("vit-h/14")
    assert cfg.drop_path == 0.2 and cfg.block_size == 4 and cfg.n_blocks == 16


def test_study_show_says_when_a_fit_cannot_pass() -> None:
    from xtra.reports.scaling.feasibility import law_checks

    def show(*args: str) -> str:
        out = CliRunner().invoke(app, ["show", *args], terminal_width=250)
        assert out.exit_code == 0, out.output
        return out.output

    assert "L(N, D): 16 distinct (N, D) points, 3.2 per parameter: the full law can pass; the held-out " \
           "check refits it on 12 points" in show("scaling", "--preset", "paper")
    assert "L(N, D): 9 points for 5 parameters: the full law cannot pass" in show("scaling", "--preset", "smoke")
    assert "loss vs samples: 4 points for 3 parameters: the law cannot pass (needs >= 6) (each group)" in \
        show("sample-budget")
    # seeds repeat a point (the fits resample and cross-validate them together): 2 seeds still give 9 points
    grid = [("", n, d) for n in (1, 2, 3) for d in (10, 20, 40)]
    assert law_checks(grid * 2)[0].startswith("L(N, D): 9 points for 5 parameters: the full law cannot pass")
    assert law_checks([("", n, 10) for n in (1, 2, 3)]) == [
        "loss vs parameters: 3 distinct values: the report fits a power law from 4 (nothing to fit)"]
