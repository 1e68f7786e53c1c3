"""Faults the tests inject into pretraining, as `xtra.pretrain.PretrainHook`s (the library holds none).

In-process: `pretrain(..., hooks=[CrashOnce(512)])`. Inside trials run by Ray workers (a study driven
as a subprocess): set `XTRA_PRETRAIN_HOOKS=<this file>:from_env` and `XTRA_FAULT_<KIND>=KEY=VALUE@SAMPLES`
(`env(...)` does both); the fault applies to the trials whose config has KEY=VALUE.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from xtra.distributed import World
from xtra.pretrain import PretrainHook

HOOKS = f"{Path(__file__).resolve()}:from_env"


class NanAt(PretrainHook):
    """The loss turns NaN from `samples` on (the run must stop with NonFiniteLoss)."""

    def __init__(self, samples: int) -> None:
        self.samples = samples

    def loss(self, step: int, samples_seen: int, loss: Any) -> Any:
        return loss * float("nan") if samples_seen >= self.samples else loss


class CrashOnce(PretrainHook):
    """An exception right after the first checkpoint at or past `samples`; a marker file in the run
    directory makes it once per run, so the retry (or resume) goes through."""

    def __init__(self, samples: int) -> None:
        self.samples = samples

    def checkpointed(self, run_dir: Path, samples_seen: int, world: World, done: bool) -> None:
        marker = run_dir / ".fault-crashed"
        if world.main and samples_seen >= self.samples and not marker.exists():
            marker.write_text(str(samples_seen))
            raise RuntimeError(f"injected fault: crash once at {samples_seen} samples (XTRA_FAULT_CRASH_ONCE)")


class KillWorkerOnce(PretrainHook):
    """The last rank of a data-parallel run dies without a word (os._exit) after that checkpoint, once."""

    def __init__(self, samples: int) -> None:
        self.samples = samples

    def checkpointed(self, run_dir: Path, samples_seen: int, world: World, done: bool) -> None:
        marker = run_dir / ".fault-killed"
        if (world.distributed and world.rank == world.size - 1 and not done and samples_seen >= self.samples
                and not marker.exists()):
            marker.write_text(f"rank {world.rank} at {samples_seen}")
            os._exit(1)


class HoldOnce(PretrainHook):
    """The first trial of a study to checkpoint at or past `samples` pauses there for `HOLD_S` seconds,
    once per study (a marker in the study directory, which names the trial): a test that signals
    the driver when the marker appears knows the trial is mid-pretraining, however fast the box is."""

    HOLD_S = 20.0

    def __init__(self, samples: int) -> None:
        self.samples = samples

    def checkpointed(self, run_dir: Path, samples_seen: int, world: World, done: bool) -> None:
        marker = run_dir.parents[1] / HELD
        if world.main and not done and samples_seen >= self.samples and not marker.exists():
            marker.write_text(run_dir.name)
            time.sleep(self.HOLD_S)


HELD = ".fault-held"
KINDS = {"XTRA_FAULT_NAN": NanAt, "XTRA_FAULT_CRASH_ONCE": CrashOnce, "XTRA_FAULT_KILL_WORKER": KillWorkerOnce,
         "XTRA_FAULT_HOLD_ONCE": HoldOnce}


def _applies(cfg: Any, spec: str) -> int | None:
    """`KEY=VALUE@SAMPLES`: SAMPLES when the trial's config has KEY=VALUE, else None."""
    match, _, at = spec.rpartition("@")
    key, _, value = match.partition("=")
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part, None)
    return int(at) if str(node) == value.strip() else None


def from_env(cfg: Any) -> list[PretrainHook]:
    """The hooks `XTRA_FAULT_<KIND>` asks for this trial (the factory `XTRA_PRETRAIN_HOOKS` names)."""
    hooks = []
    for variable, kind in KINDS.items():
        spec = os.environ.get(variable, "").strip()
        at = _applies(cfg, spec) if spec else None
        if at is not None:
            hooks.append(kind(at))
    return hooks


def env(**faults: str) -> dict[str, str]:
    """Environment entries that inject `faults` (e.g. CRASH_ONCE="model.block_size=1@128") into a study's trials."""
    return {"XTRA_PRETRAIN_HOOKS": HOOKS, **{f"XTRA_FAULT_{kind}": spec for kind, spec in faults.items()}}
