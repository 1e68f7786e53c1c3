"""Block-causal attention: masks by index arithmetic and interchangeable kernels.

Tokens are laid out block-major (each k x k block contiguous, blocks in order), so the mask is a
staircase: token i may attend to token j iff ``i // k² >= j // k²``. ``True`` = may attend.

Backends: ``math`` (reference), ``sdpa`` (default, CPU+GPU), ``flex`` (block-sparse FlexAttention:
trains on GPU, forward only on CPU), ``xformers`` (CUDA only, optional extra, imported lazily).
Only torch is imported at module level.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "math", "flex", "xformers")


# ---------------------------------------------------------------------------------------------
# Layout and masks


@functools.lru_cache(maxsize=64)
def block_major_order(grid: int, k: int) -> torch.Tensor:
    """Raster indices of the patches in block-major order: (grid*grid,) long, on CPU."""
    nb = grid // k
    br, bc, r, c = torch.meshgrid(torch.arange(nb), torch.arange(nb), torch.arange(k), torch.arange(k), indexing="ij")
    return ((br * k + r) * grid + (bc * k + c)).reshape(-1)


@functools.lru_cache(maxsize=64)
def _block_causal_mask_cached(n_tokens: int, block_tokens: int, device: str) -> torch.Tensor:
    block_id = torch.arange(n_tokens, device=device) // block_tokens
    return block_id[:, None] >= block_id[None, :]


def block_causal_mask(n_tokens: int, block_tokens: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, T) bool staircase mask, built once per shape and device."""
    if n_tokens % block_tokens:
        raise ValueError(f"n_tokens={n_tokens} is not a multiple of block_tokens={block_tokens}")
    return _block_causal_mask_cached(n_tokens, block_tokens, str(torch.device(device)))


def skipped_fraction(n_tokens: int, block_tokens: int) -> float:
    """Fraction of the T x T scores a block-sparse kernel never computes (the upper staircase)."""
    nb = n_tokens // block_tokens
    return 1.0 - (nb * (nb + 1) / 2) / (nb * nb)


# ---------------------------------------------------------------------------------------------
# Kernels. q, k, v: (B, H, T, Dh). block_tokens=None means full (bidirectional) attention.


def attend_math(q, k, v, block_tokens: int | None):
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, T, T)
    if block_tokens is not None:
        scores = scores.masked_fill(~block_causal_mask(q.shape[-2], block_tokens, q.device), float("-inf"))
    return scores.softmax(dim=-1) @ v


def attend_sdpa(q, k, v, block_tokens: int | None):
    if block_tokens is None:
        return F.scaled_dot_product_attention(q, k, v)
    if block_tokens == 1:  # plain causal: lets SDPA pick its causal fast path
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(q.shape[-2], block_tokens, q.device))


@functools.lru_cache(maxsize=32)
def _flex_block_mask(n_tokens: int, block_tokens: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def block_causal(b, h, q_idx, kv_idx):
        return q_idx // block_tokens >= kv_idx // block_tokens

    return create_block_mask(block_causal, B=None, H=None, Q_LEN=n_tokens, KV_LEN=n_tokens, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def attend_flex(q, k, v, block_tokens: int | None):
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        raise RuntimeError("attention backend 'flex' has no backward on CPU (forward only): "
                           "train with model.attention=sdpa, or use flex on a GPU")
    if q.device.type == "cpu":  # inference only: torch refuses inputs that require grad even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    mask = None if block_tokens is None else _flex_block_mask(q.shape[-2], block_tokens, str(q.device))
    fn = _compiled_flex() if q.device.type == "cuda" else flex_attention
    return fn(q, k, v, block_mask=mask)


@functools.lru_cache(maxsize=1)
def _xformers_ops():
    import xformers.ops as xops  # optional extra `gpu`; imported only when asked for

    return xops


@functools.lru_cache(maxsize=32)
def _xformers_bias(n_tokens: int, block_tokens: int, heads: int, device: str, dtype: torch.dtype):
    xops = _xformers_ops()
    if block_tokens == 1:
        return xops.LowerTriangularMask()
    # Tensor biases must be allocated with a last dim padded to a multiple of 8, then sliced.
    padded = (n_tokens + 7) // 8 * 8
    bias = torch.zeros(heads, n_tokens, padded, device=device, dtype=dtype)
    mask = block_causal_mask(n_tokens, block_tokens, device)
    bias[:, :, :n_tokens].masked_fill_(~mask, float("-inf"))
    return bias[:, :, :n_tokens]


def attend_xformers(q, k, v, block_tokens: int | None):
    if q.device.type != "cuda":
        raise RuntimeError("attention backend 'xformers' needs a CUDA device (it has no CPU kernels); use sdpa")
    xops = _xformers_ops()
    b, h, t, _ = q.shape
    bias = None
    if block_tokens is not None:
        bias = _xformers_bias(t, block_tokens, h, str(q.device), q.dtype)
        if isinstance(bias, torch.Tensor):
            bias = bias.unsqueeze(0).expand(b, -1, -1, -1)
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)  # (B, H, T, Dh)


KERNELS = {"math": attend_math, "sdpa": attend_sdpa, "flex": attend_flex, "xformers": attend_xformers}


# ---------------------------------------------------------------------------------------------
# Backend choice


def backend_status(device: torch.device | str = "cpu") -> dict[str, str]:
    return dict(_backend_status_cached(str(torch.device(device))))


@functools.lru_cache(maxsize=8)
def _backend_status_cached(device: str) -> tuple:
    """Which backends work on `device`, and why the others don't (for `xtra info` and logs)."""
    device = torch.device(device)
    status = {"math": "ok (reference)", "sdpa": "ok"}
    try:
        from torch.nn.attention import flex_attention  # noqa: F401

        status["flex"] = "ok" if device.type == "cuda" else "forward only on CPU (no backward)"
    except ImportError as err:  # pragma: no cover - old torch
        status["flex"] = f"unavailable: {err}"
    if device.type != "cuda":
        status["xformers"] = "unavailable: needs CUDA (xformers has no CPU kernels)"
    else:
        try:
            _xformers_ops()
            q = torch.zeros(1, 8, 1, 8, device=device, dtype=torch.float16)
            _xformers_ops().memory_efficient_attention(q, q, q)
            status["xformers"] = "ok"
        except Exception as err:  # noqa: BLE001 - any failure means "do not use it"
            status["xformers"] = f"unavailable: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
    return tuple(status.items())


def resolve_backend(name: str, device: torch.device | str) -> str:
    """`auto` -> xformers on CUDA when its kernels load, else sdpa."""
    return _resolve_cached(name, str(device))


@functools.lru_cache(maxsize=32)
def _resolve_cached(name: str, device: str) -> str:
    if name != "auto":
        if name not in KERNELS:
            raise ValueError(f"attention backend {name!r} is not known (allowed: auto, {', '.join(BACKENDS)})")
        return name
    device = torch.device(device)
    if device.type == "cuda" and backend_status(device).get("xformers") == "ok":
        return "xformers"
    return "sdpa"


def attend(q, k, v, block_tokens: int | None, backend: str):
    return KERNELS[backend](q, k, v, block_tokens)
