"""Unit level: configs validate at the edge with messages naming the field, value and what is allowed."""

import pytest

from xtra.config import DataConfig, PretrainConfig, ProbeConfig, TrialConfig, model_config
from xtra.overrides import from_dict, override, valid_keys


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


# Known identities, computed by the release that wrote the study directories users have on disk
# (main at 3cf7ad7 gives the same values). A change to hashed fields or their defaults must be a
# deliberate one: bump IDENTITY_VERSION (so old directories migrate or are refused with a message)
# and update these values; an accidental change would silently rerun every user's study. The official
# rules of issue #34 (LEGACY_VALUES) did not bump it: under the earlier values every earlier trial keeps
# its hash (the rows marked LEGACY), and today's defaults hash anew (the rows below them).
LEGACY = {"model.patch_init": "xavier", "pretrain.decay_positions": False}
KNOWN_HASHES = [
    ("tiny", LEGACY, "2ebce80d114c", "011600b25be1"),
    ("cpu-s", LEGACY, "3d7bb703f609", "3a27f449f8b2"),
    ("vit-b/16", {**LEGACY, "model.block_size": 1}, "2dce7cdeda7a", "c4fdb28dcb20"),  # k = 1 was its default
    ("cpu-s", {**LEGACY, "model.block_size": 2, "pretrain.samples": 30000, "seed": 1}, "9fcb8396f396", None),
    ("cpu-s", {**LEGACY, "model.block_size": 2, "model.order": "raster"}, "e9c3bae8f2f1", "9ccc8e35628a"),
    ("cpu-s", {**LEGACY, "model.block_size": 2, "model.order": "random"}, "7c7753e9f1d0", "be7be6ed64e6"),
    # pseudo-random: the same pretraining; probed in raster order now (was 7885251511fb, the first order)
    ("cpu-s", {**LEGACY, "model.block_size": 2, "model.order": "pseudo-random"}, "5a1c9a1bbf77", "f73b01bc6e5f"),
    ("tiny", {}, "fd3d93733a87", "40b231cf0bf7"),
    ("cpu-s", {}, "62cbed694a2e", "db476ce4fa38"),
    ("vit-b/16", {}, "fbaf8d42b2dd", "ac3943c395e4"),
]


@pytest.mark.parametrize("size,sets,config_hash,probe_hash", KNOWN_HASHES)
def test_identities_are_pinned_across_releases(size, sets, config_hash, probe_hash):
    from xtra.config import IDENTITY_VERSION

    cfg = override(TrialConfig(model=model_config(size)), sets)
    assert IDENTITY_VERSION == 2, "IDENTITY_VERSION changed: update KNOWN_HASHES with the new identities"
    assert cfg.config_hash() == config_hash
    if probe_hash is not None:
        assert cfg.probe_hash() == probe_hash


def test_the_official_rules_are_the_defaults_and_identity_only_where_they_differ():
    from xtra.config import LEGACY_VALUES

    assert LEGACY_VALUES == LEGACY
    cfg = TrialConfig()
    assert (cfg.model.patch_init, cfg.pretrain.decay_positions) == ("kaiming", True)
    assert "patch_init" in cfg.identity()["model"] and "decay_positions" in cfg.identity()["pretrain"]
    legacy = override(cfg, LEGACY)
    assert "patch_init" not in legacy.identity()["model"] and "decay_positions" not in legacy.identity()["pretrain"]
    for key, value in LEGACY.items():  # each rule alone is a different trial
        assert override(cfg, {key: value}).config_hash() not in (cfg.config_hash(), legacy.config_hash())
    with pytest.raises(ValueError, match=r"model.patch_init='he' is not allowed \(allowed: 'kaiming', 'xavier'\)"):
        model_config("tiny", patch_init="he")


def test_a_stored_config_that_predates_the_official_rules_reads_as_the_earlier_ones(tmp_path):
    from xtra.checkpoint import load_checkpoint, save_checkpoint

    old = TrialConfig().to_dict()
    del old["model"]["patch_init"], old["pretrain"]["decay_positions"]  # what xtra wrote before issue #34
    cfg = from_dict(old)
    assert (cfg.model.patch_init, cfg.pretrain.decay_positions) == ("xavier", False)
    assert cfg.config_hash() == override(TrialConfig(), LEGACY).config_hash()
    assert from_dict(TrialConfig().to_dict()) == TrialConfig()  # today's configs read back as written
    save_checkpoint(tmp_path / "checkpoint.pt", {"config": old, "model": {}})
    stored = load_checkpoint(tmp_path)["config"]
    assert (stored["model"]["patch_init"], stored["pretrain"]["decay_positions"]) == ("xavier", False)


def test_a_study_records_its_rules_and_an_earlier_study_keeps_the_earlier_ones(tmp_path):
    """A study resolved now records the official values (so it resumes under them); the study.toml of
    a study run before the keys existed (tests/fixtures/study-3cf7ad7) resolves to the earlier ones,
    with its trials' hashes as on disk."""
    import json
    from pathlib import Path

    from xtra.studies.load import load_study

    new = load_study("block-size", preset="smoke")
    assert {k: new.base[k] for k in LEGACY} == {"model.patch_init": "kaiming", "pretrain.decay_positions": True}
    (tmp_path / "study.toml").write_text(new.to_toml())
    assert {k: load_study(tmp_path).base[k] for k in LEGACY} == {k: new.base[k] for k in LEGACY}
    old_dir = Path(__file__).parent / "fixtures" / "study-3cf7ad7"
    old = load_study(old_dir)
    assert {k: old.base[k] for k in LEGACY} == LEGACY
    on_disk = {json.loads(p.read_text())["config_hash"] for p in (old_dir / "trials").glob("*/trial.json")}
    assert {s.config_hash for s in old.expand()} == on_disk and len(on_disk) == 2
    explicit = load_study("block-size", preset="smoke", sets={"model.patch_init": "xavier"})
    assert explicit.base["model.patch_init"] == "xavier" and explicit.base["pretrain.decay_positions"] is True


def test_vit_sizes_default_to_the_official_block_size():
    """Every official ViT-B and ViT-H config keeps config/base.yaml's block_size: 4."""
    assert model_config("vit-b/16").block_size == 4 and model_config("vit-h/14").block_size == 4


def test_an_earlier_run_resumes_under_its_own_rules_and_refuses_the_new_ones(tmp_path):
    """A checkpoint written before the keys existed (simulated: a legacy run's checkpoint with the keys
    removed from its stored config) is accepted under the earlier rules and refuses today's defaults,
    naming the key, instead of changing a run's rules midway."""
    import torch

    from xtra.checkpoint import CheckpointError
    from xtra.config import DataConfig, PretrainConfig
    from xtra.pretrain import pretrain

    data = DataConfig(name="synthetic", synthetic_size=256)
    legacy_model = model_config("tiny", block_size=2, patch_init="xavier")
    legacy = PretrainConfig(samples=64, batch_size=32, warmup_samples=0, device="cpu", decay_positions=False)
    pretrain(legacy_model, data, legacy, tmp_path)
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["model"]["patch_init"], state["config"]["pretrain"]["decay_positions"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"differs in: model.patch_init"):
        pretrain(model_config("tiny", block_size=2), data, PretrainConfig(**{**legacy.__dict__,
                                                                             "decay_positions": True}), tmp_path)
    pretrain(legacy_model, data, legacy, tmp_path)  # its own rules: accepted (finished, nothing to train)
    assert torch.load(path, weights_only=True)["samples_seen"] == 64
