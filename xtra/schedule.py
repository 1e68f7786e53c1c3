"""Learning-rate schedules and the warmup-stable-decay trunk/branch arithmetic (pure, torch-free).

`cosine` (the default, as in the XTRA paper): linear warmup, then a cosine to `min_lr` at the
budget, so every budget is its own run. `wsd` (warmup-stable-decay; Hägele et al. 2024, "Scaling
Laws and Compute-Optimal Training Beyond Fixed Training Durations"): linear warmup, a constant lr,
then a cooldown to `min_lr` over the last `cooldown_fraction` of the budget, `linear` or `1-sqrt`.

Under wsd the lr before a run's *branch point* (where its cooldown starts) does not depend on the
budget, and neither does anything else in the loop (init, data order and augmentation are seeded by
seed and step), so the state after S samples is the same for every budget whose branch point is
>= S. Hence the plan for D1 < ... < Dn: one *trunk* (a wsd run with `cooldown_fraction = 0`, i.e.
no cooldown) to the largest branch point, keeping checkpoints at every branch point
(`pretrain(keep_at=...)`), and one *branch* per budget continuing from its branch point
(`pretrain(init_from=...)`) under the budget's own config, bitwise the run a single wsd trial of
that budget would make. Cost: max B_i + sum(D_i - B_i) instead of sum(D_i).

Identities: `trunk_identity` is the trial's pretraining identity without `pretrain.samples`,
`pretrain.cooldown_fraction` and `pretrain.cooldown_shape` (what every branch of a trunk shares: the
warmup is absolute, so budgets with different warmups are different trunks). A branch needs no
identity of its own: a branch *is* the wsd trial of its budget (bitwise), so its `config_hash()`
(= trunk identity + budget + cooldown) names it, whichever way it was trained.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from xtra.config import RESOURCE_KEYS, PretrainConfig, TrialConfig

# The fields a trunk's branches may differ in: where each one stops and how it cools down.
BRANCH_KEYS = ("samples", "cooldown_fraction", "cooldown_shape")


def lr_at(samples_seen: int, cfg: PretrainConfig) -> float:
    """The lr of the step that starts after `samples_seen` samples: linear warmup from
    warmup_start_lr to lr over warmup_samples, then cosine to min_lr at cfg.samples (`cosine`), or
    constant until the branch point and a cooldown to min_lr at cfg.samples (`wsd`)."""
    if samples_seen < cfg.warmup_samples:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * samples_seen / cfg.warmup_samples
    if cfg.schedule == "wsd":
        start = cfg.branch_point()
        if samples_seen < start or cfg.samples == start:
            return cfg.lr
        x = min((samples_seen - start) / (cfg.samples - start), 1.0)  # cooldown progress in [0, 1]
        factor = 1.0 - x if cfg.cooldown_shape == "linear" else 1.0 - math.sqrt(x)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * factor
    progress = (samples_seen - cfg.warmup_samples) / max(cfg.samples - cfg.warmup_samples, 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def branch_point(cfg: PretrainConfig) -> int:
    """Samples seen when a wsd run's cooldown starts: budget x (1 - cooldown_fraction), rounded
    down to a step boundary (a multiple of batch_size) so a checkpoint lands exactly on it."""
    if cfg.schedule != "wsd":
        raise ValueError(f"pretrain.schedule={cfg.schedule!r} has no branch point (allowed: 'wsd')")
    return cfg.branch_point()


def trunk_config(cfg: PretrainConfig, reach: int | None = None) -> PretrainConfig:
    """The trunk of a wsd config: the same recipe without a cooldown, run to `reach` samples (the
    group's largest branch point; default: this config's own). Its state at any S <= reach is the
    state of every branch whose branch point is >= S."""
    reach = branch_point(cfg) if reach is None else reach
    if reach % cfg.batch_size or reach < cfg.warmup_samples or reach <= 0:
        raise ValueError(f"trunk reach={reach} must be a positive multiple of pretrain.batch_size={cfg.batch_size} "
                         f"and >= pretrain.warmup_samples={cfg.warmup_samples} (use the branch points' maximum)")
    return dataclasses.replace(cfg, samples=reach, cooldown_fraction=0.0)


def trunk_identity(trial: TrialConfig) -> str:
    """The hash every branch of one trunk shares: the pretraining identity without the branch keys."""
    if trial.pretrain.schedule != "wsd":
        raise ValueError(f"pretrain.schedule={trial.pretrain.schedule!r} has no trunk (allowed: 'wsd')")
    identity = trial.identity()
    identity["pretrain"] = {k: v for k, v in identity["pretrain"].items() if k not in BRANCH_KEYS}
    blob = json.dumps({"trunk": identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Trunk:
    """One shared trunk of a wsd study: its config (no cooldown, run to its reach) and its branches."""

    trunk_id: str
    config: TrialConfig
    branch_points: tuple[int, ...]  # sorted, distinct: the trunk keeps a checkpoint at each
    branches: tuple[TrialConfig, ...]

    @property
    def reach(self) -> int:
        return self.branch_points[-1]

    @property
    def samples(self) -> int:
        """Samples the trunk and all its branches train."""
        return self.reach + sum(b.pretrain.samples - branch_point(b.pretrain) for b in self.branches)


def plan_trunks(trials: Iterable[TrialConfig]) -> list[Trunk]:
    """Group the wsd trials by trunk identity (cosine trials are left out: each is its own run)."""
    groups: dict[str, list[TrialConfig]] = {}
    for trial in trials:
        if trial.pretrain.schedule == "wsd":
            groups.setdefault(trunk_identity(trial), []).append(trial)
    trunks = []
    for tid, members in groups.items():
        members = sorted(members, key=lambda t: (t.pretrain.samples, t.config_hash()))
        points = tuple(sorted({branch_point(t.pretrain) for t in members}))
        deepest = max(members, key=lambda t: branch_point(t.pretrain))
        trunk = dataclasses.replace(deepest, pretrain=trunk_config(deepest.pretrain, points[-1]))
        trunks.append(Trunk(tid, trunk, points, tuple(members)))
    return trunks


def samples_trained(trials: Iterable[TrialConfig]) -> dict[str, Any]:
    """What a study trains, in samples: every cosine trial from scratch, every wsd group as one
    trunk plus its cooldowns; against the cosine equivalent (every trial from scratch)."""
    trials = list(trials)
    trunks = plan_trunks(trials)
    cosine = sum(t.pretrain.samples for t in trials if t.pretrain.schedule != "wsd")
    trained = cosine + sum(t.samples for t in trunks)
    equivalent = sum(t.pretrain.samples for t in trials)
    return {"trials": len(trials), "trunks": len(trunks), "trained": trained, "cosine_equivalent": equivalent,
            "saving": equivalent / max(trained, 1)}


def continuation_error(stored: dict[str, Any], cfg: PretrainConfig, samples_seen: int) -> str | None:
    """Why the state after `samples_seen` samples of a run under `stored` (a checkpoint's
    `config.pretrain`) cannot continue as a run under `cfg`, or None if it can; the reason completes
    "checkpoint was written for a ...". It can when the
    recipes are equal (resources aside), or, under wsd, when they differ only in the branch keys and
    neither run had started its cooldown yet (their lr histories are then identical)."""
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(stored) - known)
    if unknown:
        return f"pretrain config with keys unknown here ({', '.join(f'pretrain.{k}' for k in unknown)})"
    try:
        old = PretrainConfig(**stored)  # fills keys added since the checkpoint was written with defaults
    except (TypeError, ValueError) as err:
        return f"pretrain config that is not valid here ({err})"
    a, b = _science(old), _science(cfg)
    diff = sorted(k for k in a if a[k] != b[k])
    if not diff:
        return None
    if (old.schedule == cfg.schedule == "wsd" and set(diff) <= set(BRANCH_KEYS)
            and samples_seen <= old.branch_point() and samples_seen <= cfg.branch_point()):
        return None
    why = ""
    if set(diff) <= set(BRANCH_KEYS) and old.schedule == cfg.schedule == "wsd":
        why = (f"; a wsd state continues under another budget or cooldown only up to both branch points "
               f"(state at {samples_seen} samples, branch points {old.branch_point()} and {cfg.branch_point()})")
    return f"different pretrain config (differs in: {', '.join(f'pretrain.{k}' for k in diff)}){why}"


def _science(cfg: PretrainConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if f"pretrain.{k}" not in RESOURCE_KEYS}
