"""Unit level: the model's contracts (causality through gradients, gradients everywhere, cost model)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from xtra.config import model_config
from xtra.costs import flops_per_image, n_params, n_params_encoder
from xtra.model import XTRA, _token_order, block_crops, block_orders, parameter_groups


def _tiny(**kw):
    return model_config("tiny", **kw)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("order", ["raster", "random"])
def test_prediction_i_sees_blocks_up_to_i_only(k, order):
    """predict(x)[:, i] has zero gradient w.r.t. every pixel of later blocks, non-zero w.r.t. block i."""
    cfg = model_config("tiny", patch_size=4, block_size=k, order=order, n_orders=4)  # 8x8 grid
    torch.manual_seed(0)
    model = XTRA(cfg).eval()
    order_index = 2 if order == "random" else 0
    seq = block_orders(cfg.n_blocks, cfg.n_orders, cfg.order_seed)[order_index] if order == "random" \
        else torch.arange(cfg.n_blocks)
    x = torch.randn(1, 1, 32, 32, requires_grad=True)
    pred = model.predict(x, order_index)
    assert pred.shape == (1, cfg.n_blocks - 1, cfg.block_pixels)
    for i in range(cfg.n_blocks - 1):
        (grad,) = torch.autograd.grad(pred[:, i].sum(), x, retain_graph=True)
        per_block = block_crops(grad, cfg).abs().sum(-1)[0]  # (n_blocks,) in raster block order
        seen = set(seq[: i + 1].tolist())
        for b in range(cfg.n_blocks):
            if b in seen:
                continue
            assert per_block[b] == 0, f"prediction {i} leaks block {b}"
        assert per_block[int(seq[i])] > 0, f"prediction {i} ignores its own block"


@pytest.mark.parametrize("overrides", [{}, {"block_size": 2, "next_heads": 2, "loss": "l1"}, {"order": "random"}])
def test_every_parameter_gets_a_gradient(overrides):
    cfg = _tiny(drop_path=0.1, **overrides)
    torch.manual_seed(0)
    model = XTRA(cfg)
    model(torch.randn(4, 1, 32, 32)).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_targets_are_next_blocks_normalized():
    cfg = _tiny(block_size=2)
    model = XTRA(cfg)
    x = torch.randn(3, 1, 32, 32)
    t = model.targets(x)
    assert t.shape == (3, cfg.n_blocks, cfg.block_pixels)
    torch.testing.assert_close(t.mean(-1), torch.zeros(3, cfg.n_blocks), atol=1e-5, rtol=0)
    # the official loss normalises with the unbiased (n - 1) variance
    torch.testing.assert_close(t.std(-1, unbiased=True), torch.ones(3, cfg.n_blocks), atol=1e-3, rtol=0)
    # Block 1 (raster) is the top-right 16x16 crop of the 32x32 image.
    crop = x[:, :, :16, 16:].permute(0, 2, 3, 1).reshape(3, -1)
    torch.testing.assert_close(block_crops(x, cfg)[:, 1], crop)


@pytest.mark.parametrize("size,k", [("tiny", 1), ("tiny", 2), ("cpu-s", 2), ("cpu-s", 4)])
def test_param_count_matches_built_model(size, k):
    cfg = model_config(size, block_size=k, next_heads=2)
    model = XTRA(cfg)
    assert sum(p.numel() for p in model.parameters()) == n_params(cfg)
    assert sum(p.numel() for p in model.encoder.parameters()) == n_params_encoder(cfg)


def test_paper_sizes():
    assert 85e6 < n_params_encoder(model_config("vit-b/16")) < 87e6  # "ViT-B/16 with 85M params"
    assert 620e6 < n_params_encoder(model_config("vit-h/14")) < 650e6


@pytest.mark.parametrize("size,k,heads", [("tiny", 1, 1), ("cpu-s", 2, 2), ("cpu-s", 4, 1)])
def test_flops_match_flop_counter(size, k, heads):
    cfg = model_config(size, block_size=k, next_heads=heads, attention="math")
    model = XTRA(cfg)
    x = torch.randn(2, 1, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(x).backward()
    measured = counter.get_total_flops() / 2
    assert measured == pytest.approx(flops_per_image(cfg), rel=0.02)


def test_features_stop_at_deepest_layer_and_validate():
    cfg = model_config("cpu-s")
    model = XTRA(cfg).eval()
    x = torch.randn(2, 1, 32, 32)
    feats = model.encoder.features(x, layers=(2, -1))
    assert [f.shape for f in feats] == [(2, 64, cfg.width)] * 2
    with FlopCounterMode(display=False) as shallow:
        model.encoder.features(x, layers=(1,))
    with FlopCounterMode(display=False) as deep:
        model.encoder.features(x, layers=(-1,))
    assert shallow.get_total_flops() < deep.get_total_flops() / 2
    with pytest.raises(ValueError, match="out of range"):
        model.encoder.features(x, layers=(9,))


def test_same_seed_same_model_and_loss():
    cfg = _tiny(block_size=2)
    x = torch.randn(4, 1, 32, 32)
    losses = []
    for _ in range(2):
        torch.manual_seed(3)
        losses.append(XTRA(cfg)(x).item())
    assert losses[0] == losses[1]


def test_activation_checkpointing_is_the_same_function_with_the_same_gradients():
    from xtra.config import TrialConfig
    from xtra.overrides import override

    torch.manual_seed(0)
    images = torch.randn(4, 1, 32, 32)
    grads = []
    for checkpointing in (False, True):
        cfg = model_config("tiny", drop_path=0.2, activation_checkpointing=checkpointing)
        torch.manual_seed(1)
        model = XTRA(cfg).train()
        torch.manual_seed(2)  # drop path draws: recomputation must replay them exactly
        loss = model(images)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = grads
    assert torch.equal(l0, l1)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g0, g1))
    base = override(TrialConfig(), {"model.activation_checkpointing": True})
    assert base.config_hash() == TrialConfig().config_hash()  # a resource, not identity


def test_patch_embedding_is_kaiming_normal_fan_in_relu_as_official():
    """vit.py: nn.init.kaiming_normal_(mode='fan_in', nonlinearity='relu'), bias 0: std sqrt(2 / fan_in),
    normal (about 32% of the values beyond one std, where a uniform init has 42%)."""
    cfg = model_config("cpu-m", patch_size=8)  # 192 x 64 = 12,288 weights, fan_in 64
    torch.manual_seed(0)
    weight = XTRA(cfg).encoder.patch_embed.proj.weight.detach()
    std = (2 / (cfg.channels * cfg.patch_size**2)) ** 0.5
    assert weight.std().item() == pytest.approx(std, rel=0.03)
    assert (weight.abs() > std).float().mean().item() == pytest.approx(0.317, abs=0.02)
    torch.manual_seed(0)
    legacy = XTRA(model_config("cpu-m", patch_size=8, patch_init="xavier")).encoder.patch_embed.proj.weight.detach()
    bound = (6 / (cfg.channels * cfg.patch_size**2 + cfg.width)) ** 0.5  # Xavier-uniform over (out, in)
    assert legacy.abs().max().item() <= bound and legacy.std().item() == pytest.approx(bound / 3**0.5, rel=0.03)


def test_weight_decay_exempts_only_biases_and_1d_tensors_as_official():
    """utils.py param_groups: no decay for 'bias' names and 1-D tensors, so pos_embed is decayed."""
    from xtra.config import PretrainConfig
    from xtra.pretrain import make_optimizer

    model = XTRA(_tiny(block_size=2, next_heads=2))
    names = {id(p): n for n, p in model.named_parameters()}
    for groups in (parameter_groups(model, 0.05), make_optimizer(model, PretrainConfig()).param_groups):
        decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
        exempt = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
        assert {"encoder.pos", "predictor.pos", "encoder.patch_embed.proj.weight"} <= decayed
        assert exempt == {n for n, p in model.named_parameters() if p.ndim == 1}
    legacy = make_optimizer(model, PretrainConfig(decay_positions=False)).param_groups
    assert {"encoder.pos", "predictor.pos"} <= {names[id(p)] for g in legacy if g["weight_decay"] == 0
                                               for p in g["params"]}


@pytest.mark.parametrize("order", ["pseudo-random", "random"])
def test_probe_features_are_in_raster_block_order_whatever_the_training_order(order):
    """The official Classifier reads the encoder unpermuted; the training order only permutes the
    tokens, so an ordered model's features equal the same weights' features in raster order."""
    cfg = _tiny(patch_size=4, block_size=2, order=order)  # 16 blocks, 16 orders
    torch.manual_seed(0)
    model = XTRA(cfg).eval()
    raster = XTRA(model_config("tiny", patch_size=4, block_size=2)).eval()
    raster.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        got = model.encoder.features(x, layers=(1, -1), norm=False)
        want = raster.encoder.features(x, layers=(1, -1), norm=False)
        first_order = model.encoder(x, _token_order(cfg, 0, "cpu"), 4)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    if order == "pseudo-random":  # its first training order is not raster: the old probing order differs
        assert not torch.allclose(first_order, raster.encoder(x, _token_order(raster.cfg, 0, "cpu"), 4))
