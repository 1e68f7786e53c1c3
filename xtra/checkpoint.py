"""Atomic checkpoints: write to a temp file beside the target, fsync, rename. Load with weights_only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from xtra.config import with_legacy_values
from xtra.fileio import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: F401 - re-exported
from xtra.trialdir import CHECKPOINT, CHECKPOINTS  # file names: trialdir is their one owner

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, truncated or belongs to another config."""


def kept_checkpoint(run_dir: Path, samples: int) -> Path:
    """Where a run keeps its immutable copy of the state after exactly `samples` samples."""
    return Path(run_dir) / CHECKPOINTS / f"samples-{int(samples)}.pt"


def kept_samples(run_dir: Path) -> list[int]:
    """The sample counts a run has kept copies at, ascending (temp files of a torn write excluded)."""
    folder = Path(run_dir) / CHECKPOINTS
    found = []
    for path in folder.glob("samples-*.pt") if folder.is_dir() else []:
        tail = path.stem[len("samples-"):]
        if tail.isdigit():
            found.append(int(tail))
    return sorted(found)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here (expected a {CHECKPOINT} written by `xtra pretrain`)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise CheckpointError(f"{path}: not an xtra checkpoint (format {FORMAT} with a 'model' entry expected)")
    if isinstance(state.get("config"), dict):  # written before a key of LEGACY_VALUES: its legacy value
        state["config"] = with_legacy_values(state["config"])
    return state
