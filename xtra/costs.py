"""What a model costs, as pure functions of its config (no model built): parameters, training FLOPs
per image, the memory a pretraining step needs at least, and the GPU peak a cost turns into time with.

FLOPs are matmul FLOPs only (2*m*n*k), like torch's FlopCounterMode; the block-causal mask is applied
densely, so attention is counted over all T x T scores."""

from __future__ import annotations

from typing import Any

from xtra.config import ModelConfig

# Per-image training cost on a GPU, for `workers_advice`: FLOPs / (MFU x peak). The defaults are the
# README's goal (40% MFU) and an H200's dense bf16 peak (989 TFLOP/s); not measured here.
H200_BF16_PEAK = 989e12
TARGET_MFU = 0.40


def _block_params(d: int, mlp_ratio: float) -> int:
    h = int(d * mlp_ratio)
    attn = d * 3 * d + 3 * d + d * d + d
    mlp = d * h + h + h * d + d
    norms = 4 * d
    return attn + mlp + norms


def n_params_encoder(m: ModelConfig) -> int:
    patch = m.channels * m.patch_size**2 * m.width + m.width
    pos = m.n_tokens * m.width
    return patch + pos + m.depth * _block_params(m.width, m.mlp_ratio) + 2 * m.width


def n_params(m: ModelConfig) -> int:
    proj = m.width * m.proj_hidden + m.proj_hidden + m.proj_hidden * m.pred_width + m.pred_width
    pred = m.n_tokens * m.pred_width + m.pred_depth * _block_params(m.pred_width, m.mlp_ratio) + 2 * m.pred_width
    k2 = m.block_size**2
    head_in, head_out = k2 * m.pred_width, m.block_pixels
    head = head_in * m.head_hidden + m.head_hidden + m.head_hidden * head_out + head_out
    return n_params_encoder(m) + proj + pred + m.next_heads * head


def _block_flops(t: int, d: int, mlp_ratio: float) -> int:
    h = int(d * mlp_ratio)
    linear = 2 * t * (d * 3 * d + d * d + d * h + h * d)
    attention = 2 * 2 * t * t * d  # Q K^T and A V
    return linear + attention


def encoder_flops_forward(m: ModelConfig) -> int:
    t = m.n_tokens
    patch = 2 * t * m.channels * m.patch_size**2 * m.width
    return patch + m.depth * _block_flops(t, m.width, m.mlp_ratio)


def flops_forward(m: ModelConfig) -> int:
    t = m.n_tokens
    proj = 2 * t * (m.width * m.proj_hidden + m.proj_hidden * m.pred_width)
    pred = m.pred_depth * _block_flops(t, m.pred_width, m.mlp_ratio)
    k2 = m.block_size**2
    # Every head predicts from the blocks that have a target `j + 1` blocks ahead.
    head = sum(2 * (m.n_blocks - 1 - j) * (k2 * m.pred_width * m.head_hidden + m.head_hidden * m.block_pixels)
               for j in range(m.next_heads))
    return encoder_flops_forward(m) + proj + pred + head


def flops_per_image(m: ModelConfig) -> int:
    """Training FLOPs per image (forward + backward). Backward costs 2x forward, except the patch
    embedding, whose input (the pixels) needs no gradient."""
    patch = 2 * m.n_tokens * m.channels * m.patch_size**2 * m.width
    return 3 * flops_forward(m) - patch


def size_columns(m: ModelConfig) -> dict[str, int]:
    """The size columns of a result row: pure functions of the model config (no model needed)."""
    return {"block_size": m.block_size, "width": m.width, "depth": m.depth, "n_params": n_params(m),
            "n_params_encoder": n_params_encoder(m), "flops_per_image": flops_per_image(m)}


def describe(m: ModelConfig) -> str:
    return (f"{n_params(m) / 1e6:.2f}M params ({n_params_encoder(m) / 1e6:.2f}M encoder), "
            f"{flops_per_image(m) / 1e9:.3f} GFLOP/image, {m.n_blocks} blocks of {m.block_size}x{m.block_size}")


OPTIMIZER_BYTES_PER_PARAM = 16  # fp32 weights + gradients + AdamW's two moments
# Per token, per width unit, per layer: at least the residual stream each layer keeps for backward (4
# bytes: fp32, or bf16 input and output). Real use is several times more; this is a floor, so a refusal
# is certain and a size that fits is never refused.
ACTIVATION_BYTES = 4


def memory_estimate(model: Any, batch_size: int, accumulate: int = 1) -> int:
    """A lower bound on the bytes a pretraining step needs (no model built): parameters with their
    gradients and AdamW state, plus what each layer keeps for backward for one micro-batch (one layer's
    worth with activation checkpointing)."""
    micro = max(1, batch_size // max(1, accumulate))
    widths = [model.width] * model.depth + [model.pred_width] * model.pred_depth
    if getattr(model, "activation_checkpointing", False):
        widths = [max(widths)]
    return n_params(model) * OPTIMIZER_BYTES_PER_PARAM + micro * model.n_tokens * sum(widths) * ACTIVATION_BYTES


def check_memory(model: Any, batch_size: int, accumulate: int, available: int, where: str) -> None:
    """ValueError (one line, with the estimate) when a trial cannot fit in `available` bytes of `where`."""
    need = memory_estimate(model, batch_size, accumulate)
    if need > available:
        raise ValueError(f"model.width={model.width}, model.depth={model.depth}, pretrain.batch_size={batch_size}: "
                         f"needs at least {need / 2**30:,.1f} GiB (a lower bound), more than the "
                         f"{available / 2**30:,.1f} GiB of {where} (allowed: a smaller model or batch, "
                         "pretrain.accumulate, or model.activation_checkpointing)")


def gpu_hours(flops_per_image: float, samples: float, peak_flops: float = H200_BF16_PEAK,
              mfu: float = TARGET_MFU) -> float:
    """Pretraining GPU-hours at `mfu` of a dense bf16 peak: the cost estimate `study show` prints."""
    return flops_per_image * samples / (peak_flops * mfu) / 3600
