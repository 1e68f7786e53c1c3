"""When things happen in a probe: the lr schedule, the seeds (from (seed, kind) only, never from
the number of heads), steps per epoch, the epochs at which heads are scored and the
"still improving" flag (a doubling test)."""

from __future__ import annotations

import math
import zlib

import torch

from xtra.config import ProbeConfig


def probe_lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, cfg: ProbeConfig) -> float:
    """The official probe schedule: linear warmup from lr * warmup_start to lr over `warmup_steps`,
    then a cosine from lr down to cfg.min_lr at the last step."""
    if step < warmup_steps:
        return lr * (cfg.warmup_start + (1.0 - cfg.warmup_start) * step / warmup_steps)
    progress = (step - warmup_steps) / max(total_steps - 1 - warmup_steps, 1)
    return cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def probe_seed(seed: int, kind: str, what: str, index: int = 0) -> int:
    """A seed from (seed, kind, what, index) only: never from the number of heads."""
    tag = zlib.crc32(f"{kind}/{what}".encode())
    return (seed * 1_000_003 + tag * 7_919 + index * 104_729 + 13) % (2**63 - 1)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches only (BatchNorm needs > 1 sample); a set smaller than a batch is one batch."""
    return max(n // batch_size, 1)


def check_epochs(epochs: int) -> tuple[int, ...]:
    """Epochs (1-based) after which every head is scored on val: half-way, three quarters and the
    end (the chosen head's val curve, recorded with its result)."""
    return tuple(sorted({e for e in (epochs // 2, (3 * epochs) // 4, epochs) if e >= 1}))


IMPROVING_TOL = 0.0025  # a probe whose val top-1 rose by more than this when its schedule doubled is flagged
IMPROVING_Z = 1.645  # ... and significantly so: McNemar's one-sided test at 95%


def still_improving(longer_right: torch.Tensor, shorter_right: torch.Tensor) -> bool:
    """Whether doubling the schedule paid: `longer_right` / `shorter_right` say per val image whether the
    head on the longer / the shorter of two schedules, one twice the other (the same lr, init and
    shuffles: the chosen head and its twin), is right. True when the longer one's val top-1 exceeds the
    shorter one's by more than IMPROVING_TOL and significantly: on the images where they disagree (b
    only the longer right, c only the shorter), McNemar's z = (b - c) / sqrt(b + c) > IMPROVING_Z, so
    the val noise between two nearly equal heads raises no flag. A converged probe gains nothing from
    doubling; under a cosine schedule a run's last quarter gains from annealing alone, so its own val
    curve cannot tell."""
    b = int((longer_right & ~shorter_right).sum())
    c = int((~longer_right & shorter_right).sum())
    return (b - c) / max(len(longer_right), 1) > IMPROVING_TOL and (b - c) > IMPROVING_Z * math.sqrt(b + c)
