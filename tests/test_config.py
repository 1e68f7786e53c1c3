"""Unit level: configs validate at the edge with messages naming the field, value and what is allowed."""

import pytest

from xtra.config import (
    DataConfig,
    PretrainConfig,
    ProbeConfig,
    TrialConfig,
    from_dict,
    model_config,
    override,
    valid_keys,
)


def test_bad_block_size_names_the_grid_and_allowed_values():
    with pytest.raises(ValueError, match=r"block_size=3 does not divide the 8x8 patch grid \(allowed: 1, 2, 4\)"):
        model_config("cpu-s", block_size=3)
    with pytest.raises(ValueError, match="one block"):
        model_config("cpu-s", block_size=8)


@pytest.mark.parametrize("kw,match", [
    ({"width": 100, "num_heads": 3}, "width=100 is not divisible by model.num_heads=3"),
    ({"img_size": 30}, "img_size=30 is not divisible by model.patch_size=4"),
    ({"loss": "huber"}, "model.loss='huber' is not allowed"),
    ({"attention": "cudnn"}, "model.attention='cudnn'"),
    ({"next_heads": 64}, "next_heads=64"),
])
def test_model_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        model_config("cpu-s", **kw)


def test_other_sections_validate():
    with pytest.raises(ValueError, match="data.name='imagenet'"):
        DataConfig(name="imagenet")
    with pytest.raises(ValueError, match="warmup_samples"):
        PretrainConfig(samples=10, warmup_samples=100)
    with pytest.raises(ValueError, match="probe.kinds"):
        ProbeConfig(kinds=("knn",))
    with pytest.raises(ValueError, match="unknown size|not known"):
        model_config("vit-z")


def test_override_applies_dotted_keys_and_rejects_unknown():
    cfg = override(TrialConfig(), {"model.block_size": 2, "pretrain.lr": 3e-4, "seed": 5, "probe.lrs": [1e-3]})
    assert cfg.model.block_size == 2 and cfg.pretrain.lr == 3e-4 and cfg.seed == 5 and cfg.probe.lrs == (1e-3,)
    with pytest.raises(ValueError, match="unknown config key 'model.blocksize'.*model.block_size"):
        override(cfg, {"model.blocksize": 2})
    with pytest.raises(ValueError, match="wrong type"):
        override(cfg, {"model.block_size": "two"})
    with pytest.raises(ValueError, match="block_size=3"):
        override(cfg, {"model.block_size": 3})
    assert "model.block_size" in valid_keys()


def test_hash_is_stable_and_roundtrips():
    a = override(TrialConfig(), {"model.block_size": 2})
    b = from_dict(a.to_dict())
    assert a == b and a.config_hash() == b.config_hash()
    assert a.config_hash() != TrialConfig().config_hash()
