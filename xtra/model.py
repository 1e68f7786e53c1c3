"""XTRA: a block-causal ViT encoder, a ViT predictor, and an MLP that predicts the next block's pixels.

Reads top to bottom: PatchEmbed -> Attention -> MLP -> Block -> Encoder -> Predictor -> PixelHead
-> XTRA. Tokens are permuted once into block-major order (each k x k block contiguous, blocks in
raster or a fixed pseudo-random order), positional embeddings travel with them, and one staircase
mask serves every layer. Only torch (and numpy-free) imports, so it runs on a stock PyTorch image.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from xtra.attention import attend, block_major_order, resolve_backend
from xtra.config import ModelConfig

NORM_EPS = 1e-6


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)

    def forward(self, images):  # (B, C, H, W)
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, T, D), raster order


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, backend: str):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.qkv = nn.Linear(width, 3 * width)  # fused: one matmul for q, k, v
        self.proj = nn.Linear(width, width)

    def forward(self, x, block_tokens: int | None):
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, T, Dh)
        backend = resolve_backend(self.backend, x.device)
        y = attend(qkv[0], qkv[1], qkv[2], block_tokens, backend)  # (B, H, T, Dh)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, out or width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def drop_path(x, p: float, training: bool):
    """Stochastic depth: drop the residual branch per sample."""
    if p == 0.0 or not training:
        return x
    keep = torch.rand(x.shape[0], 1, 1, device=x.device, dtype=x.dtype) >= p
    return x * keep / (1.0 - p)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, drop_path: float, backend: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=NORM_EPS)
        self.attn = Attention(width, heads, backend)
        self.norm2 = nn.LayerNorm(width, eps=NORM_EPS)
        self.mlp = MLP(width, int(width * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x, block_tokens: int | None):
        x = x + drop_path(self.attn(self.norm1(x), block_tokens), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


def run_block(block: Block, x, block_tokens: int | None, checkpointing: bool):
    """A block, or (training with activation checkpointing) a block whose activations are recomputed
    in the backward pass instead of stored: same function, same RNG (drop path), less memory."""
    if checkpointing and block.training and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, x, block_tokens, use_reentrant=False)
    return block(x, block_tokens)


class Encoder(nn.Module):
    """The ViT that is kept after pretraining and probed."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.channels, cfg.patch_size, cfg.width)
        self.pos = nn.Parameter(torch.zeros(1, cfg.n_tokens, cfg.width))  # raster order
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.num_heads, cfg.mlp_ratio, r, cfg.attention) for r in rates)
        self.norm = nn.LayerNorm(cfg.width, eps=NORM_EPS)

    def embed(self, images, token_order):
        x = self.patch_embed(images) + self.pos  # (B, T, D) raster
        return x[:, token_order]  # (B, T, D) block-major; positions travel with the tokens

    def forward(self, images, token_order, block_tokens: int | None):
        x = self.embed(images, token_order)
        for block in self.blocks:
            x = run_block(block, x, block_tokens, self.cfg.activation_checkpointing)
        return self.norm(x)  # (B, T, D)

    def features(self, images, layers=(-1,), mask: str = "block", norm: bool = True) -> list[torch.Tensor]:
        """Token features after the given blocks (1-based, or negative from the end), in block-major
        order with the blocks in raster order, whatever order the model was trained in (the official
        Classifier probes a pseudo-random model unpermuted, so in raster order); runs only up to the
        deepest layer asked for. `norm=True` applies the final LayerNorm to every layer returned;
        `norm=False` returns the raw block outputs (what the official XTRA probes read)."""
        depth = len(self.blocks)
        wanted = sorted({layer if layer > 0 else depth + 1 + layer for layer in layers})
        if not wanted or wanted[0] < 1 or wanted[-1] > depth:
            raise ValueError(f"layers={tuple(layers)} out of range for an encoder of depth {depth} "
                             f"(allowed: 1..{depth} or -{depth}..-1)")
        if mask not in ("block", "none"):
            raise ValueError(f"mask={mask!r} is not allowed (allowed: 'block', 'none')")
        block_tokens = self.cfg.block_size**2 if mask == "block" else None
        x = self.embed(images, _raster_token_order(self.cfg, images.device))
        out = []
        for i, block in enumerate(self.blocks[: wanted[-1]], start=1):
            x = block(x, block_tokens)
            if i in wanted:
                out.append(self.norm(x) if norm else x)
        return [out[wanted.index(layer if layer > 0 else depth + 1 + layer)] for layer in layers]


class Predictor(nn.Module):
    """Projection MLP into a narrower ViT with its own positional embeddings, same mask."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.project = MLP(cfg.width, cfg.proj_hidden, cfg.pred_width)
        self.pos = nn.Parameter(torch.zeros(1, cfg.n_tokens, cfg.pred_width))  # raster order
        self.blocks = nn.ModuleList(
            Block(cfg.pred_width, cfg.pred_num_heads, cfg.mlp_ratio, 0.0, cfg.attention) for _ in range(cfg.pred_depth))
        self.norm = nn.LayerNorm(cfg.pred_width, eps=NORM_EPS)
        self.checkpointing = cfg.activation_checkpointing

    def forward(self, x, token_order, block_tokens: int):
        x = self.project(x) + self.pos[:, token_order]  # (B, T, Dp)
        for block in self.blocks:
            x = run_block(block, x, block_tokens, self.checkpointing)
        return self.norm(x)


class PixelHead(nn.Module):
    """One MLP from a block's k² concatenated predictor outputs to a (k·p)² crop of pixels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.mlp = MLP(cfg.block_size**2 * cfg.pred_width, cfg.head_hidden, cfg.block_pixels)

    def forward(self, blocks):  # (B, n, k*k*Dp)
        return self.mlp(blocks)  # (B, n, (k*p)^2 * C)


@functools.lru_cache(maxsize=64)
def block_orders(n_blocks: int, n_orders: int, seed: int) -> torch.Tensor:
    """A fixed, seeded set of block permutations: (n_orders, n_blocks). The first is raster, so the
    validation loss sees the canonical order; training draws one per step."""
    gen = torch.Generator().manual_seed(seed)
    perms = [torch.arange(n_blocks)] + [torch.randperm(n_blocks, generator=gen) for _ in range(n_orders - 1)]
    return torch.stack(perms)


@functools.lru_cache(maxsize=64)
def pseudo_random_orders(n_blocks: int, n_orders: int, seed: int) -> torch.Tensor:
    """The official XTRA pseudo-random orders: (n_orders, n_blocks), every one a random permutation and
    no two sharing a prefix (so each starts with its own block; n_orders <= n_blocks). Training draws one
    per step; the validation loss uses the first, which is random too, not raster (probes read raster
    order, `Encoder.features`). Equal to the official `create_random_permutations` for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    perms: list[torch.Tensor] = []
    while len(perms) < n_orders:
        p = torch.randperm(n_blocks, generator=gen)
        if all(int(p[0]) != int(q[0]) for q in perms):  # distinct first blocks = no common prefix
            perms.append(p)
    return torch.stack(perms)


def _block_order(cfg: ModelConfig, order_index: int) -> torch.Tensor:
    if cfg.order == "raster":
        return torch.arange(cfg.n_blocks)
    if cfg.order == "pseudo-random":
        return pseudo_random_orders(cfg.n_blocks, cfg.n_orders, cfg.order_seed)[order_index]
    return block_orders(cfg.n_blocks, cfg.n_orders, cfg.order_seed)[order_index]


@functools.lru_cache(maxsize=256)
def _token_order_cached(cfg: ModelConfig, order_index: int, device: str) -> torch.Tensor:
    k2 = cfg.block_size**2
    by_block = block_major_order(cfg.grid, cfg.block_size).view(cfg.n_blocks, k2)  # (nb, k*k) raster indices
    return by_block[_block_order(cfg, order_index)].reshape(-1).to(device)  # (T,)


def _token_order(cfg: ModelConfig, order_index: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Raster indices of the tokens in the order the model sees them; cached per device (no per-step copies)."""
    return _token_order_cached(cfg, order_index, str(torch.device(device)))


@functools.lru_cache(maxsize=64)
def _raster_token_order_cached(grid: int, block_size: int, device: str) -> torch.Tensor:
    return block_major_order(grid, block_size).to(device)


def _raster_token_order(cfg: ModelConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """Raster indices of the tokens block-major with the blocks in raster order: what probes read."""
    return _raster_token_order_cached(cfg.grid, cfg.block_size, str(torch.device(device)))


def block_crops(images, cfg: ModelConfig):
    """Pixels of every k x k block in raster block order: (B, n_blocks, (k·p)² · C)."""
    b, c, h, w = images.shape
    s, nb_side = cfg.block_size * cfg.patch_size, cfg.grid // cfg.block_size
    x = images.view(b, c, nb_side, s, nb_side, s).permute(0, 2, 4, 3, 5, 1)  # (B, nbh, nbw, s, s, C)
    return x.reshape(b, nb_side * nb_side, s * s * c)


def normalize_crops(crops):
    """Per-crop normalized pixels (the regression target). The variance is the unbiased one (n - 1), as
    in the official XTRA `_loss` (and MAE): the released weights' loss is reproduced exactly."""
    mean = crops.mean(dim=-1, keepdim=True)
    var = crops.var(dim=-1, keepdim=True, unbiased=True)
    return (crops - mean) / (var + NORM_EPS).sqrt()


class XTRA(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.predictor = Predictor(cfg)
        self.heads = nn.ModuleList(PixelHead(cfg) for _ in range(cfg.next_heads))  # head j: block i+1+j
        self.apply(functools.partial(_init_weights, patch_init=cfg.patch_init))
        nn.init.trunc_normal_(self.encoder.pos, std=0.02)
        nn.init.trunc_normal_(self.predictor.pos, std=0.02)

    def _predict_all(self, images, order_index: int):
        cfg = self.cfg
        order = _token_order(cfg, order_index, images.device)
        k2 = cfg.block_size**2
        x = self.encoder(images, order, k2)  # (B, T, D)
        y = self.predictor(x, order, k2)  # (B, T, Dp)
        blocks = y.reshape(y.shape[0], cfg.n_blocks, k2 * cfg.pred_width)  # (B, nb, k*k*Dp): concat a block's tokens
        return [head(blocks[:, : cfg.n_blocks - 1 - j]) for j, head in enumerate(self.heads)]  # (B, nb-1-j, P)

    def predict(self, images, order_index: int = 0):
        """(B, n_blocks - 1, (k·p)²·C): entry i sees blocks 0..i (in the order) and predicts block i+1."""
        return self._predict_all(images, order_index)[0]

    def targets(self, images, order_index: int = 0):
        """Normalized pixels of every block, in the order: (B, n_blocks, (k·p)²·C)."""
        order = _block_order(self.cfg, order_index).to(images.device)
        return normalize_crops(block_crops(images, self.cfg)[:, order])

    def forward(self, images, order_index: int = 0):
        """The training loss: mean over heads of the per-element error against the normalized next block(s)."""
        target = self.targets(images, order_index)  # (B, nb, P)
        error = F.mse_loss if self.cfg.loss == "l2" else F.l1_loss
        predictions = self._predict_all(images, order_index)
        losses = [error(pred.float(), target[:, 1 + j:]) for j, pred in enumerate(predictions)]
        return torch.stack(losses).mean()


def _init_weights(module: nn.Module, patch_init: str) -> None:
    """The official init (vit.py, mlp.py): Linear truncated-normal std 0.02, LayerNorm 1 / 0, the patch
    embedding Kaiming-normal (fan_in, ReLU gain), biases 0. `patch_init="xavier"` is xtra's rule
    before it matched (Xavier-uniform over the flattened kernel), kept for trials trained under it."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        if patch_init == "kaiming":
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        else:
            nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def parameter_groups(model: nn.Module, weight_decay: float, decay_positions: bool = True) -> list[dict]:
    """AdamW groups. The official optimizer (utils.py `param_groups`) exempts only biases and 1-D
    tensors (norms), so the positional embeddings are decayed; `decay_positions=False` also exempts
    them (xtra's rule before it matched, kept for trials trained under it)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        position = name.endswith(".pos") or name == "pos"
        exempt = p.ndim < 2 or name.endswith(".bias") or (position and not decay_positions)
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
