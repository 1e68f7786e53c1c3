"""The official XTRA probe heads (`src/modules/cls.py`): linear and attentive, their seeded
initialization and their AdamW; both read raw block outputs (no final LayerNorm)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from xtra.config import ModelConfig, ProbeConfig
from xtra.probe.schedule import probe_seed

BN_EPS = 1e-6

# How a head's weights start (`probe.head_init`): "official" = cls.py's heads as built, every Linear at
# PyTorch's default (weights and bias uniform in +-1/sqrt(fan_in)), the attentive query Normal(0, 0.02);
# "trunc_normal" = xtra before issue #34 (Linear weights truncated Normal, std 0.02 for k/v and 0.01 for
# the classifier, zero bias; the query truncated Normal(0, 0.02)).
HEAD_INITS = ("official", "trunc_normal")


def _official_linear(lin: nn.Linear, gen: torch.Generator) -> None:
    """`nn.Linear.reset_parameters` (the init the official heads keep), drawn from `gen`."""
    nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=gen)  # = uniform(+-1/sqrt(fan_in))
    if lin.bias is not None:
        bound = 1 / math.sqrt(lin.in_features)
        nn.init.uniform_(lin.bias, -bound, bound, generator=gen)


class LinearHead(nn.Module):
    """Average-pooled last-block tokens -> BatchNorm1d(affine=False) -> Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=BN_EPS)
        self.fc = nn.Linear(dim, num_classes)

    def reset(self, gen: torch.Generator, init: str = "official") -> None:
        with torch.no_grad():
            if init == "official":
                _official_linear(self.fc, gen)
                return
            self.fc.weight.copy_(_trunc_normal(self.fc.weight.shape, 0.01, gen))
            self.fc.bias.zero_()

    def forward(self, x):  # (B, D) pooled features
        return self.fc(self.bn(x))  # (B, classes)


class AttentiveHead(nn.Module):
    """BatchNorm1d(affine=False) over the tokens, attention pooling with learned queries (k/v
    projections without bias, `heads` heads), the queries' outputs averaged, then Linear: the
    official XTRA / AIM attentive probe."""

    def __init__(self, dim: int, heads: int, queries: int, num_classes: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attentive probe: width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=BN_EPS)
        self.query = nn.Parameter(torch.zeros(1, queries, dim))
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.fc = nn.Linear(dim, num_classes)

    def reset(self, gen: torch.Generator, init: str = "official") -> None:
        with torch.no_grad():
            if init == "official":
                nn.init.normal_(self.query, std=0.02, generator=gen)
                for lin in (self.k, self.v, self.fc):
                    _official_linear(lin, gen)
                return
            self.query.copy_(_trunc_normal(self.query.shape, 0.02, gen))
            for lin, std in ((self.k, 0.02), (self.v, 0.02), (self.fc, 0.01)):
                lin.weight.copy_(_trunc_normal(lin.weight.shape, std, gen))
            self.fc.bias.zero_()

    def normalize(self, x):  # (B, T, D) -> (B, T, D): statistics per channel over batch and tokens
        b, t, d = x.shape
        # BatchNorm1d on (B*T, D) rows: the same statistics (and running estimates, n = B*T) as on
        # the (B, D, T) transpose, on contiguous memory (several times faster on CPU)
        return self.bn(x.reshape(b * t, d)).view(b, t, d)

    def forward(self, x):  # (B, T, D) token features
        """Same function as `forward_reference`, evaluated without projecting every token: with
        q·(W_k x) = (W_kᵀ q)·x and Σ_t a_t W_v x_t = W_v (Σ_t a_t x_t), a head costs O(T·D·H) per
        image instead of O(T·D²)."""
        x = self.normalize(x)
        b, t, d = x.shape
        h, q = self.heads, self.query.shape[1]
        dh = d // h
        query = self.query.view(q, h, dh)  # (Q, H, Dh)
        key_dirs = torch.einsum("qhe,hed->qhd", query, self.k.weight.view(h, dh, d)).reshape(q * h, d)  # (QH, D)
        scores = (x @ key_dirs.t() * dh**-0.5).transpose(1, 2)  # (B, QH, T)
        mixed = scores.softmax(dim=-1) @ x  # (B, QH, D): each head's attention-weighted token mean
        per_head = mixed.view(b * q, h, d).transpose(0, 1)  # (H, BQ, D)
        pooled = per_head @ self.v.weight.view(h, dh, d).transpose(1, 2)  # (H, BQ, Dh): head h's W_v rows
        return self.fc(pooled.transpose(0, 1).reshape(b, q, d).mean(dim=1))  # (B, classes): queries averaged

    def forward_reference(self, x):  # (B, T, D): the textbook form, kept to test `forward` against
        x = self.normalize(x)
        b, t, d = x.shape
        h, q = self.heads, self.query.shape[1]
        dh = d // h
        query = self.query.expand(b, -1, -1).reshape(b, q, h, dh).transpose(1, 2)  # (B, H, Q, Dh)
        k = self.k(x).view(b, t, h, dh).transpose(1, 2)  # (B, H, T, Dh)
        v = self.v(x).view(b, t, h, dh).transpose(1, 2)  # (B, H, T, Dh)
        attn = (query @ k.transpose(-2, -1) * dh**-0.5).softmax(dim=-1)  # (B, H, Q, T)
        pooled = (attn @ v).transpose(1, 2).reshape(b, q, d).mean(dim=1)  # (B, D): queries averaged
        return self.fc(pooled)  # (B, classes)


def batched_logits(heads: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """(L, B, classes): every head of `heads` (one per lr, the same shapes) on the same inputs, as
    ONE module: each layer one matmul for all heads, their weights stacked (so each head's gradient
    is still its own). Attentive heads: their BatchNorm (no parameters, identical inputs, hence
    identical statistics) runs once, with the first head's buffers; call `share_norm` before
    reading the other heads' running statistics. Linear heads: one batched Linear. The same function
    as `[head(x) for head in heads]` up to float rounding (tested)."""
    first = heads[0]
    if isinstance(first, LinearHead):
        z = first.bn(x)  # (B, D)
        weight = torch.stack([h.fc.weight for h in heads])  # (L, C, D)
        bias = torch.stack([h.fc.bias for h in heads])  # (L, C)
        return torch.baddbmm(bias.unsqueeze(1), z.expand(len(heads), -1, -1), weight.transpose(1, 2))  # (L, B, C)
    x = first.normalize(x)  # (B, T, D)
    b, t, d = x.shape
    n, h, q = len(heads), first.heads, first.query.shape[1]
    dh = d // h
    query = torch.stack([hd.query for hd in heads]).view(n, q, h, dh)  # (L, Q, H, Dh)
    w_k = torch.stack([hd.k.weight for hd in heads]).view(n, h, dh, d)  # (L, H, Dh, D)
    key_dirs = torch.einsum("lqhe,lhed->lqhd", query, w_k).reshape(n * q * h, d)  # (LQH, D)
    scores = (x @ key_dirs.t() * dh**-0.5).transpose(1, 2)  # (B, LQH, T)
    mixed = scores.softmax(dim=-1) @ x  # (B, LQH, D)
    per_head = mixed.view(b, n, q, h, d).permute(1, 3, 0, 2, 4).reshape(n * h, b * q, d)  # (LH, BQ, D)
    w_v = torch.stack([hd.v.weight for hd in heads]).view(n * h, dh, d)  # (LH, Dh, D)
    pooled = per_head @ w_v.transpose(1, 2)  # (LH, BQ, Dh)
    pooled = pooled.view(n, h, b, q, dh).permute(0, 2, 3, 1, 4).reshape(n, b, q, d).mean(dim=2)  # (L, B, D)
    weight = torch.stack([hd.fc.weight for hd in heads])  # (L, C, D)
    bias = torch.stack([hd.fc.bias for hd in heads])  # (L, C)
    return torch.baddbmm(bias.unsqueeze(1), pooled, weight.transpose(1, 2))  # (L, B, C)


def share_norm(heads: list[nn.Module]) -> None:
    """Copy the first head's BatchNorm buffers (running statistics) to the others: after
    `batched_logits` in train mode, the state each head would have reached on its own."""
    state = heads[0].bn.state_dict()
    for head in heads[1:]:
        head.bn.load_state_dict(state)


def attentive_heads(width: int, wanted: int) -> int:
    """The official 16 heads where they divide the width, else the largest divisor below (e.g. a
    width-36 encoder gets 12): small models keep the protocol's shape as closely as they can."""
    return max(h for h in range(1, min(wanted, width) + 1) if width % h == 0)


def probe_layers(cfg: ProbeConfig, depth: int) -> int:
    """Blocks the attentive probe averages: the official 6, clamped to the encoder's depth."""
    return min(cfg.layers, depth)


def protocol(kind: str, model_cfg: ModelConfig, cfg: ProbeConfig) -> dict[str, Any]:
    """The head's effective shape on this encoder (after clamping), recorded with every result."""
    if kind == "linear":
        return {"layers": 1, "heads": None}
    return {"layers": probe_layers(cfg, model_cfg.depth),
            "heads": attentive_heads(model_cfg.width, cfg.attentive_heads)}


def _trunc_normal(shape, std: float, gen: torch.Generator) -> torch.Tensor:
    """Normal(0, std) truncated to +-2 std, drawn from `gen` (resampling outliers, like timm)."""
    x = torch.randn(shape, generator=gen) * std
    while True:
        bad = x.abs() > 2 * std
        if not bad.any():
            return x
        x[bad] = torch.randn(int(bad.sum()), generator=gen) * std


def make_head(kind: str, encoder_cfg: ModelConfig, num_classes: int, cfg: ProbeConfig, seed: int) -> nn.Module:
    """A head whose initial state (`cfg.head_init`) depends only on (seed, kind): every lr starts from the
    same point."""
    if kind == "linear":
        head: nn.Module = LinearHead(encoder_cfg.width, num_classes)
    elif kind == "attentive":
        head = AttentiveHead(encoder_cfg.width, attentive_heads(encoder_cfg.width, cfg.attentive_heads),
                             cfg.attentive_queries, num_classes)
    else:
        raise ValueError(f"probe kind {kind!r} is not allowed (allowed: 'linear', 'attentive')")
    head.reset(torch.Generator().manual_seed(probe_seed(seed, kind, "init")), cfg.head_init)
    return head


def make_head_optimizer(kind: str, head: nn.Module, lr: float, cfg: ProbeConfig) -> torch.optim.Optimizer:
    """AdamW per head. Linear: weight decay `linear_weight_decay` (0, the official protocol);
    attentive: `attentive_weight_decay` on matrices and queries, none on biases."""
    wd = cfg.linear_weight_decay if kind == "linear" else cfg.attentive_weight_decay
    params = [p for p in head.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(cfg.beta1, cfg.beta2), fused=True)
