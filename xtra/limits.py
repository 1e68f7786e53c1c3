"""Bounds before work (docs/security.md): every numeric config key's range, checked in O(1) before any
check or estimate that grows with the value. (A trial's memory estimate, compared with the memory of
the device it will run on before anything is allocated, is a cost: ``xtra.costs.check_memory``.)

The ranges are generous for real studies; a value past them is a typo or an attack (`model.width=1e9`
used to hang `xtra study show` listing the divisors of a billion)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

SEED_MAX = 2**32 - 1
MAX_LIST = 1000  # entries of a numeric list key (probe.lrs, probe.at_samples, ...)
LIMITS: dict[str, tuple[float, float]] = {
    "model.img_size": (1, 8192), "model.patch_size": (1, 1024), "model.channels": (1, 64),
    "model.width": (1, 65536), "model.depth": (1, 1024), "model.num_heads": (1, 4096),
    "model.mlp_ratio": (1e-3, 64), "model.drop_path": (0, 1), "model.proj_hidden": (1, 262144),
    "model.pred_width": (1, 65536), "model.pred_depth": (1, 1024), "model.pred_num_heads": (1, 4096),
    "model.head_hidden": (1, 262144), "model.block_size": (1, 8192), "model.next_heads": (1, 65536),
    "model.n_orders": (1, 1_000_000), "model.order_seed": (0, SEED_MAX),
    "data.val_fraction": (0, 0.5), "data.split_seed": (0, SEED_MAX), "data.limit_train": (0, 10**12),
    "data.synthetic_size": (64, 10**7), "data.val_size": (0, 10**12), "data.workers": (-1, 1024),
    "pretrain.samples": (1, 10**15), "pretrain.batch_size": (1, 10**7), "pretrain.lr": (0, 100),
    "pretrain.min_lr": (0, 100), "pretrain.warmup_samples": (0, 10**15), "pretrain.warmup_start_lr": (0, 100),
    "pretrain.weight_decay": (0, 100), "pretrain.beta1": (0, 1), "pretrain.beta2": (0, 1),
    "pretrain.grad_clip": (0, 1e9), "pretrain.accumulate": (1, 10**7), "pretrain.checkpoint_every": (1, 10**15),
    "pretrain.log_every": (1, 10**12), "pretrain.cooldown_fraction": (0, 1),
    "probe.lrs": (0, 100), "probe.epochs": (1, 100_000), "probe.batch_size": (1, 10**7),
    "probe.accumulate": (1, 10**7), "probe.warmup_epochs": (0, 100_000), "probe.warmup_start": (0, 1),
    "probe.min_lr": (0, 100), "probe.beta1": (0, 1), "probe.beta2": (0, 1), "probe.grad_clip": (0, 1e9),
    "probe.linear_weight_decay": (0, 100), "probe.attentive_weight_decay": (0, 100), "probe.linear_l2": (0, 1e9),
    "probe.layers": (1, 4096), "probe.attentive_heads": (1, 4096), "probe.attentive_queries": (1, 4096),
    "probe.random_erasing": (0, 1), "probe.limit_train": (0, 10**12), "probe.at_samples": (1, 10**15),
    "probe.points": (0, 1_000_000), "seed": (0, SEED_MAX),
}


def in_range(obj: Any, section: str) -> None:
    """Each numeric field of `obj` (a config section; "" = the top level) within LIMITS, else one
    ValueError line naming the key, the value and the range. Runs first in each `__post_init__`."""
    for f in fields(obj):
        key = f"{section}.{f.name}" if section else f.name
        if key not in LIMITS:
            continue
        lo, hi = LIMITS[key]
        value = getattr(obj, f.name)
        values = value if isinstance(value, tuple) else (value,)
        if len(values) > MAX_LIST:
            raise ValueError(f"{key} has {len(values)} entries (allowed: at most {MAX_LIST})")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                shown = repr(v) if len(repr(v)) <= 40 else f"{v:.3g}" if isinstance(v, (int, float)) else repr(v)[:40]
                raise ValueError(f"{key}={shown} is out of range (allowed: {lo:g} to {hi:g})")
