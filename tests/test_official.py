"""The released XTRA weights in xtra: import both official layouts, reproduce the official model's own
outputs (tests/fixtures/official, made by scripts/official_fixture.py from the official code), refuse
what cannot be placed, continue pretraining and probe through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from xtra.attention import block_major_order
from xtra.checkpoint import load_checkpoint
from xtra.model import XTRA, _token_order, pseudo_random_orders
from xtra.official import OfficialCheckpointError, import_official, infer_config, read_official, to_xtra_state
from xtra.probe import AttentiveHead, LinearHead

FIXTURE = Path(__file__).parent / "fixtures" / "official"
META = json.loads((FIXTURE / "meta.json").read_text())
OUT = torch.load(FIXTURE / "outputs.pt", weights_only=True)
TOL = dict(atol=2e-5, rtol=1e-5)  # float32: a different but equivalent evaluation order


def _model(path: Path) -> XTRA:
    off = read_official(path)
    cfg = infer_config(off)
    model = XTRA(cfg)
    model.load_state_dict(to_xtra_state(off, cfg))
    return model.eval()


def _to_official_pixels(pred: torch.Tensor, crop_px: int, channels: int = 3) -> torch.Tensor:
    """xtra's (kp, kp, C) crop layout -> the official (C, kp, kp)."""
    b, n, _ = pred.shape
    return pred.view(b, n, crop_px * crop_px, channels).transpose(-1, -2).reshape(b, n, -1)


def test_fixture_is_small_and_records_the_official_commit():
    assert sum(f.stat().st_size for f in FIXTURE.iterdir()) < 1_000_000
    assert len(META["commit"]) == 40 and META["repository"] == "github.com/elad-amrani/xtra"


@pytest.mark.parametrize("k", [1, 2, 4])
def test_import_reproduces_the_official_outputs(k):
    model = _model(FIXTURE / f"lightning-k{k}.ckpt")
    cfg, ref, images = model.cfg, OUT[f"k{k}"], OUT["images"]
    assert (cfg.block_size, cfg.next_heads, cfg.width, cfg.depth) == (k, 2, 16, 2)
    back = torch.argsort(_token_order(cfg, 0))  # block-major -> raster, the official order
    with torch.no_grad():
        raw, = model.encoder.features(images, layers=(-1,), norm=False)
        normed, = model.encoder.features(images, layers=(-1,), norm=True)
        full = model.encoder(images, _token_order(cfg, 0), k * k)
        preds = model._predict_all(images, 0)
        loss = model(images)
    torch.testing.assert_close(raw[:, back], ref["raw_last"], **TOL)
    torch.testing.assert_close(normed[:, back], ref["normed_last"], **TOL)
    torch.testing.assert_close(full[:, back], ref["encoder"], **TOL)
    assert len(preds) == 2
    for j, pred in enumerate(preds):  # head j predicts block i+1+j; official heads cover every block
        official = ref["preds"][j][:, : cfg.n_blocks - 1 - j]
        torch.testing.assert_close(_to_official_pixels(pred, k * cfg.patch_size), official, **TOL)
    torch.testing.assert_close(loss, ref["loss"], **TOL)


def test_pseudo_random_orders_are_the_official_ones():
    """The order ablation's orders (config/ablations/ar_pattern/pesudo_random.yaml) equal the official
    `create_random_permutations` for the same seed: one order per block, none sharing a prefix."""
    ref = OUT["pseudo"]
    cfg = _model(FIXTURE / "lightning-pseudo-k2.ckpt").cfg
    assert (cfg.order, cfg.n_orders, cfg.order_seed, cfg.n_blocks) == ("pseudo-random", 16, 0, 16)
    assert torch.equal(pseudo_random_orders(cfg.n_blocks, cfg.n_orders, cfg.order_seed), ref["block_perms"])


def test_pseudo_random_import_trains_in_its_orders_and_probes_in_raster_order():
    """Its loss under order 0 (the official validation order) and under a drawn order equals the official
    one; its probe features are the official Classifier's: no permutation, raster block order."""
    model, ref, images = _model(FIXTURE / "lightning-pseudo-k2.ckpt"), OUT["pseudo"], OUT["images"]
    cfg = model.cfg
    with torch.no_grad():
        torch.testing.assert_close(model(images, 0), ref["loss"], **TOL)
        torch.testing.assert_close(model(images, ref["drawn"]), ref["loss_drawn"], **TOL)
        raw, = model.encoder.features(images, layers=(-1,), norm=False)
    back = torch.argsort(block_major_order(cfg.grid, cfg.block_size))  # block-major (raster blocks) -> raster
    torch.testing.assert_close(raw[:, back], ref["raw_last"], **TOL)


def test_the_multi_token_control_imports_and_reproduces_the_official_outputs():
    """block_2x16x16: a causal (not block-causal) encoder and predictor with two heads ahead is xtra's
    block size 1 with next_heads = 2."""
    model, ref, images = _model(FIXTURE / "lightning-causal-2x.ckpt"), OUT["causal"], OUT["images"]
    cfg = model.cfg
    assert (cfg.block_size, cfg.next_heads, cfg.order) == (1, 2, "raster")
    with torch.no_grad():
        raw, = model.encoder.features(images, layers=(-1,), norm=False)
        preds = model._predict_all(images, 0)
        torch.testing.assert_close(model(images), ref["loss"], **TOL)
    torch.testing.assert_close(raw, ref["raw_last"], **TOL)  # k = 1: block-major is raster
    for j, pred in enumerate(preds):
        official = ref["preds"][j][:, : cfg.n_blocks - 1 - j]
        torch.testing.assert_close(_to_official_pixels(pred, cfg.patch_size), official, **TOL)


def test_the_multi_token_study_holds_the_official_block_ablation():
    """config/ablations/block/: NxHxW = N heads ahead, H x W pixel blocks on ViT-B/16's 16 px patches;
    1x16x16 and 2x16x16 (k = 1, causal) are the control that separates 'a block' from 'several targets'."""
    from xtra.studies.load import load_study

    official = {(1, 1), (2, 1), (1, 2), (2, 2), (1, 4), (2, 4)}  # (heads, k): 1x/2x {16,32,64}
    paper = load_study("multi-token", preset="paper")
    assert paper.size == "vit-b/16"
    assert {(s.config.model.next_heads, s.config.model.block_size) for s in paper.expand()} == official
    cpu = load_study("multi-token", preset="cpu")
    assert {(1, 2), (2, 1)} <= {(s.config.model.next_heads, s.config.model.block_size) for s in cpu.expand()}


def test_deepspeed_layout_imports_the_same_weights():
    light, deep = read_official(FIXTURE / "lightning-k2.ckpt"), read_official(FIXTURE / "deepspeed-k2.pt")
    assert (light.layout, deep.layout) == ("lightning", "deepspeed")
    cfg = infer_config(deep)
    assert cfg == infer_config(light)
    a, b = to_xtra_state(light, cfg), to_xtra_state(deep, cfg)
    assert all(torch.equal(a[key], b[key]) for key in a)
    model = XTRA(cfg)
    model.load_state_dict(b)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(OUT["images"]), OUT["k2"]["loss"], **TOL)


def test_probe_heads_match_the_official_heads():
    ref = OUT["probe"]
    lin = LinearHead(16, META["classes"])
    st = ref["linear_state"]  # nn.Sequential(BatchNorm1d(affine=False), Linear)
    lin.load_state_dict({"bn.running_mean": st["0.running_mean"], "bn.running_var": st["0.running_var"],
                         "bn.num_batches_tracked": st["0.num_batches_tracked"],
                         "fc.weight": st["1.weight"], "fc.bias": st["1.bias"]})
    att = AttentiveHead(16, META["attentive_heads"], 1, META["classes"])
    st = ref["attentive_state"]  # AttentionPoolingClassifier: cls_token, k, v (no bias), bn, linear
    att.load_state_dict({"query": st["cls_token"], "k.weight": st["k.weight"], "v.weight": st["v.weight"],
                         "bn.running_mean": st["bn.running_mean"], "bn.running_var": st["bn.running_var"],
                         "bn.num_batches_tracked": st["bn.num_batches_tracked"],
                         "fc.weight": st["linear.weight"], "fc.bias": st["linear.bias"]})
    # The heads' inputs from xtra's import of the same encoder: the official features, reproduced.
    model = _model(FIXTURE / "lightning-k2.ckpt")
    with torch.no_grad():
        feats = model.encoder.features(OUT["images"], layers=tuple(range(-ref["layers"], 0)), norm=False)
    linear_in, attentive_in = feats[-1].mean(dim=1), torch.stack(feats).mean(dim=0)
    torch.testing.assert_close(linear_in, ref["linear_in"], **TOL)
    back = torch.argsort(_token_order(model.cfg, 0))
    torch.testing.assert_close(attentive_in[:, back], ref["attentive_in"], **TOL)
    for mode in ("eval", "train"):  # running statistics, then batch statistics
        lin.train(mode == "train")
        att.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(lin(ref["linear_in"]), ref[f"linear_{mode}"], **TOL)
            torch.testing.assert_close(att(attentive_in), ref[f"attentive_{mode}"], **TOL)
            torch.testing.assert_close(att.forward_reference(ref["attentive_in"]), ref[f"attentive_{mode}"], **TOL)


def test_heads_come_from_the_architecture_name_or_the_caller(tmp_path):
    blob = torch.load(FIXTURE / "lightning-k2.ckpt", weights_only=True)
    hp = blob["hyper_parameters"]
    del hp["enc_num_heads"]
    hp["enc_arch"] = "vit_base"  # the released ViT-B/16's name: 12 heads
    assert infer_config(_saved(tmp_path / "a.ckpt", blob), num_heads=2).num_heads == 2
    hp["enc_arch"] = "vit_custom"
    with pytest.raises(OfficialCheckpointError, match="num_heads"):
        infer_config(_saved(tmp_path / "b.ckpt", blob))


def _saved(path: Path, blob: dict):
    torch.save(blob, path)
    return read_official(path)


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_refuses_a_truncated_checkpoint(tmp_path):
    data = (FIXTURE / "lightning-k2.ckpt").read_bytes()
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(OfficialCheckpointError) as err:
        import_official(bad, tmp_path / "out")
    assert "corrupt or truncated" in _one_line(err) and not (tmp_path / "out").exists()


def test_refuses_another_architecture(tmp_path):
    timm_vit = {"state_dict": {"cls_token": torch.zeros(1, 1, 16), "pos_embed": torch.zeros(1, 65, 16),
                               "patch_embed.proj.weight": torch.zeros(16, 3, 2, 2)}}
    torch.save(timm_vit, tmp_path / "vit.ckpt")
    with pytest.raises(OfficialCheckpointError) as err:
        import_official(tmp_path / "vit.ckpt", tmp_path / "out")
    assert "'cls_token'" in _one_line(err)
    blob = torch.load(FIXTURE / "lightning-k2.ckpt", weights_only=True)
    del blob["state_dict"]["enc.pos_embed"]  # an official-looking file that lacks a part
    torch.save(blob, tmp_path / "part.ckpt")
    with pytest.raises(OfficialCheckpointError) as err:
        import_official(tmp_path / "part.ckpt", tmp_path / "out")
    assert "'enc.pos_embed'" in _one_line(err)
    torch.save({"model": {}}, tmp_path / "xtra.ckpt")
    with pytest.raises(OfficialCheckpointError) as err:
        import_official(tmp_path / "xtra.ckpt", tmp_path / "out")
    assert "no 'state_dict' (Lightning) or 'module' (DeepSpeed)" in _one_line(err)


def test_refuses_a_size_mismatch_naming_the_tensor(tmp_path):
    blob = torch.load(FIXTURE / "lightning-k2.ckpt", weights_only=True)
    blob["state_dict"]["enc.blocks.1.attn.qkv.weight"] = torch.zeros(40, 16)
    torch.save(blob, tmp_path / "bad.ckpt")
    with pytest.raises(OfficialCheckpointError) as err:
        import_official(tmp_path / "bad.ckpt", tmp_path / "out")
    text = _one_line(err)
    assert "'enc.blocks.1.attn.qkv.weight'" in text and "(40, 16)" in text and "(48, 16)" in text
    blob = torch.load(FIXTURE / "lightning-k2.ckpt", weights_only=True)
    blob["state_dict"]["enc.blocks.0.attn.rel_pos"] = torch.zeros(3)  # a tensor with no place in xtra
    torch.save(blob, tmp_path / "extra.ckpt")
    with pytest.raises(OfficialCheckpointError) as err:
        import_official(tmp_path / "extra.ckpt", tmp_path / "out")
    assert "cannot place tensor 'enc.blocks.0.attn.rel_pos'" in _one_line(err)


def test_import_writes_an_xtra_checkpoint_deterministically(tmp_path):
    info = import_official(FIXTURE / "deepspeed-k2.pt", tmp_path / "a")
    import_official(FIXTURE / "deepspeed-k2.pt", tmp_path / "b")
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == (tmp_path / "b" / "checkpoint.pt").read_bytes()
    state = load_checkpoint(tmp_path / "a")  # the normal loader: weights_only, format checked
    assert state["config"]["data"]["name"] == "cifar10" and state["samples_seen"] == 0
    assert state["official"]["layout"] == "deepspeed" and info["global_step"] == 42
    assert json.loads((tmp_path / "a" / "official.json").read_text())["weights_sha256"] == info["weights_sha256"]


@pytest.mark.slow
def test_cli_imports_continues_pretraining_and_probes(tmp_path):
    from xtra.cli.main import app

    runner = CliRunner()
    imported = tmp_path / "imported"
    res = runner.invoke(app, ["import", "official", str(FIXTURE / "lightning-k2.ckpt"), "--out", str(imported),
                              "--data", "synthetic"])
    assert res.exit_code == 0, res.output
    assert "the optimizer starts fresh" in " ".join(res.output.split()) and "pretrain.init=" in res.output
    res = runner.invoke(app, ["import", "official", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "missing.ckpt" in res.output

    cfg = read_official(FIXTURE / "lightning-k2.ckpt")
    before = load_checkpoint(imported)["model"]
    run = tmp_path / "run"
    sets = json.loads((imported / "official.json").read_text())["continue_sets"]
    res = runner.invoke(app, ["pretrain", "--out", str(run), "--data", "synthetic", "--samples", "64",
                              "--block-size", "2", *[a for s in sets for a in ("--set", s)],
                              "--set", f"pretrain.init={imported}", "--set", "pretrain.batch_size=32",
                              "--set", "pretrain.warmup_samples=0", "--set", "data.synthetic_size=256"])
    assert res.exit_code == 0, res.output
    assert "the optimizer and the lr schedule start fresh" in " ".join(res.output.split())  # rich wraps lines
    after = load_checkpoint(run)
    assert after["samples_seen"] == 64 and after["config"]["pretrain"]["init"] == str(imported)
    moved = [k for k in before if not torch.equal(before[k], after["model"][k])]
    assert moved and len(cfg.weights) > 0  # trained on from the imported weights

    res = runner.invoke(app, ["probe", str(imported), "--data", "synthetic", "--kind", "attentive", "--epochs", "2",
                              "--warmup-epochs",
                              "0", "--lrs", "1e-3", "--batch-size", "64", "--no-progress"])
    assert res.exit_code == 0, res.output
    probed = json.loads((imported / "probe.json").read_text())
    assert 0.0 <= probed["attentive"]["test_top1"] <= 1.0 and probed["meta"]["samples_seen"] == 0


def test_init_weights_are_identity_their_path_is_not(tmp_path):
    from xtra.config import TrialConfig
    from xtra.overrides import override

    import_official(FIXTURE / "lightning-k2.ckpt", tmp_path / "a")
    import_official(FIXTURE / "lightning-k2.ckpt", tmp_path / "b")  # same weights, another place
    import_official(FIXTURE / "lightning-k4.ckpt", tmp_path / "c")
    base = TrialConfig()
    a, b, c = (override(base, {"pretrain.init": str(tmp_path / n)}).config_hash() for n in "abc")
    assert a == b and a != c and a != base.config_hash()
    with pytest.raises(ValueError, match="pretrain.init=.*no checkpoint here"):
        override(base, {"pretrain.init": str(tmp_path / "nowhere")}).config_hash()


def test_init_refuses_weights_of_another_model_in_one_line(tmp_path):
    from xtra.checkpoint import CheckpointError
    from xtra.config import DataConfig, PretrainConfig, model_config
    from xtra.pretrain import pretrain

    import_official(FIXTURE / "lightning-k2.ckpt", tmp_path / "imp")
    cfg = PretrainConfig(samples=32, batch_size=32, warmup_samples=0, init=str(tmp_path / "imp"), device="cpu")
    with pytest.raises(CheckpointError) as err:
        pretrain(model_config("tiny", block_size=2), DataConfig(name="synthetic"), cfg, tmp_path / "run")
    assert "another model config" in _one_line(err) and "model.width=16 there, 32 here" in str(err.value)


def test_pretraining_data_is_read_from_the_checkpoint_or_asked_for(tmp_path):
    from xtra.official import official_data

    blob = torch.load(FIXTURE / "lightning-k2.ckpt", weights_only=True)
    hp = blob["hyper_parameters"]
    hp.update(dataset_cifar10_use=False, dataset_imagenet1k_use=True,
              dataset_imagenet1k_train_root="./data/imagenet/train/")
    data = official_data(_saved(tmp_path / "in1k.ckpt", blob))
    assert (data.name, data.fingerprint) == ("imagefolder:./data/imagenet", "imagenet-1k")
    hp["dataset_imagenet1k_use"] = False
    torch.save(blob, tmp_path / "nodata.ckpt")
    with pytest.raises(OfficialCheckpointError, match="--data"):
        import_official(tmp_path / "nodata.ckpt", tmp_path / "out")
