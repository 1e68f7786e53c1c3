"""The precision of a forward pass, one rule for pretraining and probing: bfloat16 autocast where
asked, and by default ("auto") on GPUs only (CPU runs stay float32, so the same seed gives the same
result)."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, dtype: str = "auto") -> contextlib.AbstractContextManager:
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
