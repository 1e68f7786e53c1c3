"""Warmup-stable-decay: the schedule's shapes, the trunk/branch arithmetic, and the loop features
behind it (keep_at, init_from): trunk to a branch point + branch == one uninterrupted wsd run."""

import dataclasses
import json
import math

import pytest
import torch

from xtra.checkpoint import CheckpointError, kept_checkpoint, kept_samples, load_checkpoint
from xtra.config import DataConfig, PretrainConfig, TrialConfig, model_config
from xtra.pretrain import lr_at, pretrain
from xtra.schedule import (
    branch_point,
    continuation_error,
    plan_trunks,
    samples_trained,
    trunk_config,
    trunk_identity,
)

DATA = DataConfig(name="fashion-mnist", limit_train=3000)
TINY = model_config("tiny", block_size=2)


def _wsd(**kw):
    base = dict(samples=1536, batch_size=64, warmup_samples=128, lr=2e-3, min_lr=1e-5, checkpoint_every=512,
                log_every=4, schedule="wsd", cooldown_fraction=0.25)
    return PretrainConfig(**{**base, **kw})


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["samples_seen"], r["loss"], r["lr"]) for r in rows]


def _same_state(a, b):
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert (sa["step"], sa["samples_seen"]) == (sb["step"], sb["samples_seen"])
    assert sa["model"].keys() == sb["model"].keys()
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])


# ---------------------------------------------------------------------------------------------
# The schedule, against its definition (Hägele et al. 2024, Sec. 3: warmup, constant, cooldown
# over the last fraction of training; linear: lr * (1 - x), 1-sqrt: lr * (1 - sqrt(x)), x the
# cooldown's progress; here down to min_lr instead of 0).

@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_lr_follows_its_definition(shape):
    cfg = PretrainConfig(samples=10_000, batch_size=100, warmup_samples=1_000, lr=1e-3, min_lr=1e-5,
                         warmup_start_lr=1e-6, schedule="wsd", cooldown_fraction=0.2, cooldown_shape=shape)
    start = branch_point(cfg)
    assert start == 8_000
    f = (lambda x: 1 - x) if shape == "linear" else (lambda x: 1 - math.sqrt(x))
    assert lr_at(0, cfg) == pytest.approx(1e-6)
    assert lr_at(500, cfg) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    for s in (1_000, 4_000, 7_999, 8_000):  # constant from the end of warmup to the branch point
        assert lr_at(s, cfg) == 1e-3
    for s in (8_100, 8_500, 9_000, 9_900, 10_000):
        x = (s - 8_000) / 2_000
        assert lr_at(s, cfg) == pytest.approx(1e-5 + (1e-3 - 1e-5) * f(x), rel=1e-12)
    values = [lr_at(s, cfg) for s in range(1_000, 10_001, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_at(10_000, cfg) == pytest.approx(1e-5)


def test_wsd_lr_before_the_branch_point_is_the_same_for_every_budget():
    budgets = [PretrainConfig(samples=s, batch_size=64, warmup_samples=640, schedule="wsd")
               for s in (3200, 6400, 12800)]
    trunk = trunk_config(budgets[-1], reach=max(branch_point(c) for c in budgets))
    for cfg in budgets:
        for s in range(0, branch_point(cfg) + 1, 64):
            assert lr_at(s, cfg) == lr_at(s, trunk) == lr_at(s, budgets[-1])
        assert lr_at(branch_point(cfg) + 64, cfg) < cfg.lr  # its own cooldown has started
    assert lr_at(trunk.samples, trunk) == trunk.lr  # the trunk never cools down


def test_branch_point_lands_on_a_step_boundary_with_at_least_the_cooldown():
    cfg = PretrainConfig(samples=7500, batch_size=128, warmup_samples=750, schedule="wsd", cooldown_fraction=0.2)
    assert branch_point(cfg) == 5888  # 6000 rounded down to a multiple of 128
    assert cfg.samples - branch_point(cfg) >= 0.2 * cfg.samples
    assert branch_point(PretrainConfig(samples=7500, batch_size=128, warmup_samples=0, schedule="wsd",
                                       cooldown_fraction=0.0)) == 7500
    with pytest.raises(ValueError, match="has no branch point"):
        branch_point(PretrainConfig())


@pytest.mark.parametrize("kw, message", [
    (dict(schedule="step"), r"pretrain.schedule='step' is not allowed \(allowed: 'cosine', 'wsd'\)"),
    (dict(cooldown_shape="cosine"), r"pretrain.cooldown_shape='cosine' is not allowed \(allowed: 'linear', '1-sqrt'\)"),
    (dict(cooldown_fraction=1.0), r"pretrain.cooldown_fraction=1.0 must be in \[0, 1\)"),
    (dict(schedule="wsd", samples=1000, warmup_samples=900, cooldown_fraction=0.2),
     r"pretrain.warmup_samples=900 exceeds the wsd branch point 768"),
])
def test_bad_schedule_settings_are_one_line_errors(kw, message):
    with pytest.raises(ValueError, match=message) as err:
        PretrainConfig(**{"batch_size": 128, **kw})
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Trunk identity and the plan's arithmetic.

def _trial(**pretrain_kw):
    return TrialConfig(model=TINY, data=DATA, pretrain=_wsd(**pretrain_kw))


def test_trunk_identity_ignores_only_the_budget_and_the_cooldown():
    base = trunk_identity(_trial())
    assert trunk_identity(_trial(samples=4096)) == base
    assert trunk_identity(_trial(cooldown_fraction=0.1, cooldown_shape="linear")) == base
    assert trunk_identity(_trial(checkpoint_every=64)) == base  # a resource
    assert trunk_identity(_trial(warmup_samples=256)) != base  # the warmup is absolute: another trunk
    assert trunk_identity(_trial(lr=1e-3)) != base
    assert trunk_identity(TrialConfig(model=TINY, data=DATA, pretrain=_wsd(), seed=1)) != base
    assert _trial(samples=4096).config_hash() != _trial().config_hash()  # each branch is its own trial
    with pytest.raises(ValueError, match="has no trunk"):
        trunk_identity(TrialConfig())


def test_plan_trains_one_trunk_plus_cooldowns():
    budgets = (7500, 15000, 30000, 60000)
    wsd = [TrialConfig(pretrain=PretrainConfig(samples=s, batch_size=128, warmup_samples=750, schedule="wsd"))
           for s in budgets]
    cosine = [TrialConfig(pretrain=PretrainConfig(samples=s, batch_size=128, warmup_samples=750)) for s in budgets]
    (trunk,) = plan_trunks(wsd + cosine)
    points = [(s - round(0.2 * s)) // 128 * 128 for s in budgets]  # 80% of each, down to a step boundary
    assert trunk.branch_points == tuple(points)
    assert trunk.config.pretrain.samples == points[-1] and trunk.config.pretrain.cooldown_fraction == 0
    expected = points[-1] + sum(s - p for s, p in zip(budgets, points))
    assert samples_trained(wsd) == {"trials": 4, "trunks": 1, "trained": expected, "cosine_equivalent": sum(budgets),
                                    "saving": sum(budgets) / expected}
    assert samples_trained(cosine)["trained"] == sum(budgets)
    assert samples_trained(wsd)["saving"] >= 1.5
    two_warmups = [TrialConfig(pretrain=PretrainConfig(samples=s, batch_size=128, warmup_samples=s // 10,
                                                       schedule="wsd")) for s in budgets]
    assert len(plan_trunks(two_warmups)) == 4  # budget-relative warmups share nothing


def test_a_state_continues_under_another_budget_only_before_both_cooldowns():
    long, short = _wsd(samples=1536), _wsd(samples=1024)  # branch points 1152 and 768
    stored = dataclasses.asdict(long)
    assert continuation_error(stored, long, 1536) is None  # its own resume
    assert continuation_error(stored, short, 768) is None
    assert "branch points 1152 and 768" in continuation_error(stored, short, 832)
    assert continuation_error(stored, dataclasses.replace(long, log_every=1, device="cpu"), 900) is None  # resources
    assert "differs in: pretrain.lr" in continuation_error(stored, dataclasses.replace(long, lr=1e-3), 64)
    plain = PretrainConfig(samples=1536, batch_size=64, warmup_samples=128)
    cosine = dataclasses.asdict(plain)
    assert "differs in: pretrain.samples" in continuation_error(cosine, dataclasses.replace(plain, samples=1024), 64)
    written_before_wsd = {k: v for k, v in cosine.items()
                          if k not in ("schedule", "cooldown_fraction", "cooldown_shape")}
    assert continuation_error(written_before_wsd, plain, 64) is None
    assert "keys unknown here (pretrain.bogus)" in continuation_error({**cosine, "bogus": 1}, long, 64)


# ---------------------------------------------------------------------------------------------
# The loop: keep_at and init_from.

def test_trunk_and_branches_equal_uninterrupted_wsd_runs_bitwise(tmp_path):
    short, long = _wsd(samples=1024), _wsd(samples=1536)
    points = (branch_point(short), branch_point(long))
    assert points == (768, 1152)
    trunk_dir = tmp_path / "trunk"
    events = []
    pretrain(TINY, DATA, trunk_config(long, reach=points[1]), trunk_dir, seed=2, keep_at=points,
             report=events.append)
    assert kept_samples(trunk_dir) == list(points)
    assert [e["samples_seen"] for e in events if e["kind"] == "kept"] == list(points)
    for cfg, point in ((short, points[0]), (long, points[1])):
        branch = tmp_path / f"branch-{cfg.samples}"
        result = pretrain(TINY, DATA, cfg, branch, seed=2, init_from=kept_checkpoint(trunk_dir, point))
        assert result["samples_seen"] == cfg.samples and result["init_samples"] == point
        alone = tmp_path / f"alone-{cfg.samples}"
        pretrain(TINY, DATA, cfg, alone, seed=2, keep_at=tuple(p for p in points if p <= point))
        _same_state(branch, alone)
        assert _rows(branch) == _rows(alone)  # the branch's curve starts with the trunk's
        assert [r[3] for r in _rows(branch)][-1] < cfg.lr  # and cooled down
        assert load_checkpoint(branch)["init"]["samples_seen"] == point
    # A branch resumed from its own checkpoint keeps going (init_from is then ignored) and ends the same.
    again = pretrain(TINY, DATA, long, tmp_path / f"branch-{long.samples}", seed=2,
                     init_from=kept_checkpoint(trunk_dir, points[0]))
    assert again["samples_seen"] == long.samples and again["init_samples"] == points[1]


def test_a_trunk_extends_to_a_later_branch_point_bitwise(tmp_path):
    cfg = _wsd(samples=1536)
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    pretrain(TINY, DATA, trunk_config(cfg, reach=1152), straight, seed=1, keep_at=(512, 1152))
    pretrain(TINY, DATA, trunk_config(cfg, reach=512), extended, seed=1, keep_at=(512,))
    pretrain(TINY, DATA, trunk_config(cfg, reach=1152), extended, seed=1, keep_at=(512, 1152))
    _same_state(straight, extended)
    _same_state(kept_checkpoint(straight, 1152), kept_checkpoint(extended, 1152))
    with pytest.raises(ValueError, match=r"keep_at=256: this run starts at 1152 samples, past it"):
        pretrain(TINY, DATA, trunk_config(cfg, reach=1152), extended, seed=1, keep_at=(256,))


def test_init_from_refuses_a_state_that_is_not_on_the_branch(tmp_path):
    trunk_dir = tmp_path / "trunk"
    pretrain(TINY, DATA, trunk_config(_wsd(samples=1536), reach=1152), trunk_dir, seed=0, keep_at=(1152,))
    short = _wsd(samples=1024)  # branch point 768: the trunk's state at 1152 is past it
    with pytest.raises(CheckpointError, match=r"differs in: pretrain.cooldown_fraction, pretrain.samples.*"
                                              r"state at 1152 samples, branch points 1152 and 768"):
        pretrain(TINY, DATA, short, tmp_path / "b1", seed=0, init_from=kept_checkpoint(trunk_dir, 1152))
    with pytest.raises(CheckpointError, match=r"differs in: .*pretrain.schedule"):
        pretrain(TINY, DATA, _wsd(schedule="cosine"), tmp_path / "b2", seed=0,
                 init_from=kept_checkpoint(trunk_dir, 1152))
    with pytest.raises(CheckpointError, match="written for seed 0, not 1"):
        pretrain(TINY, DATA, _wsd(), tmp_path / "b3", seed=1, init_from=kept_checkpoint(trunk_dir, 1152))
    with pytest.raises(CheckpointError, match="init_from .*nowhere.pt: no checkpoint here"):
        pretrain(TINY, DATA, _wsd(), tmp_path / "b4", seed=0, init_from=tmp_path / "nowhere.pt")
    for bad in (100, 0, 2048):
        with pytest.raises(ValueError, match=rf"keep_at={bad} is not a step boundary .*multiples of "
                                             r"pretrain.batch_size=64 from 64 to 1536"):
            pretrain(TINY, DATA, _wsd(), tmp_path / "b5", seed=0, keep_at=(bad,))


def test_a_wsd_job_is_one_typed_record_from_the_plan_to_the_trial():
    """The plan's job (xtra.trialdir.WsdJob) travels through Ray as plain data and comes back equal;
    a role that is neither trunk nor branch is a one-line error."""
    from xtra.trialdir import BRANCH, TRUNK, WsdJob

    trunk = WsdJob(TRUNK, keep_at=(256, 512))
    branch = WsdJob(BRANCH, trunk_dir="/study/trials/t123", start=512)
    assert trunk.as_dict() == {"role": "trunk", "keep_at": [256, 512]}  # the form earlier drivers sent
    assert branch.as_dict() == {"role": "branch", "trunk_dir": "/study/trials/t123", "start": 512}
    assert [WsdJob.from_dict(json.loads(json.dumps(j.as_dict()))) for j in (trunk, branch)] == [trunk, branch]
    assert branch.trunk_name == "t123" and WsdJob.from_dict(None) is None and WsdJob.from_dict({}) is None
    with pytest.raises(ValueError, match=r"^job.role='stem': unknown \(allowed: trunk, branch\)$"):
        WsdJob.from_dict({"role": "stem"})
