"""Probes on the frozen encoder with the official XTRA heads: linear and attentive.

The heads follow XTRA's `src/modules/cls.py` (tested against a transcription of it): both read the
raw block outputs (no final LayerNorm). Linear: the last block, mean over tokens,
BatchNorm1d(affine=False, eps 1e-6), Linear. Attentive: the mean of the last 6 blocks (clamped to the
depth), BatchNorm over tokens, attention pooling with 16 heads (clamped to a divisor of the width on
small models) and 1 learned query, k/v without bias, Linear. Schedule: warmup from lr/10, cosine to
`min_lr`, AdamW betas (0.9, 0.95), gradient clip 3.0, `accumulate` micro-batches per step.
Augmentation (`probe.augment`): RandomResizedCrop + flip for both kinds, plus RandAugment and random
erasing for the attentive probe (`xtra.probe_augment`, no torchvision/timm).

All learning rates train at once: one encoder forward per batch feeds N independent heads, one per
learning rate, each with its own optimizer and schedule. The heads are a plain list of modules with
an optimizer each, and every head starts from the same seeded initial state, so a head trained
together with others is bitwise the head trained alone (tested). Randomness (initialization,
shuffling, augmentation) depends only on ``(seed, kind)`` and the epoch / step, never on the
number of heads.

Without augmentation the head inputs (the pooled last-layer features for the linear probe, the
token features for the attentive probe when they are small) are computed once and cached, in
memory or in a scratch ``np.memmap`` on disk; every epoch then trains on the cache.

Model selection is honest: the learning rate is chosen on ``dataset.val`` (carved from the training
set by the data module) and the test top-1 is reported for that one head only.

Only torch and numpy are imported at module level (rich and the data module are imported where used).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from xtra.checkpoint import CHECKPOINT, CheckpointError, atomic_write_json, load_checkpoint
from xtra.config import DataConfig, ModelConfig, ProbeConfig, override
from xtra.model import XTRA, Encoder

PROBE_JSON = "probe.json"
PROBE_RANDOM_JSON = "probe-random.json"
MEMORY_CACHE_BYTES = 4 << 30  # auto: cache train+val+test head inputs in memory up to 4 GiB,
DISK_CACHE_BYTES = 64 << 30  # then on disk up to 64 GiB (e.g. attentive tokens of Fashion-MNIST), else recompute
BN_EPS = 1e-6

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Heads


class LinearHead(nn.Module):
    """Average-pooled last-block tokens -> BatchNorm1d(affine=False) -> Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=BN_EPS)
        self.fc = nn.Linear(dim, num_classes)

    def reset(self, gen: torch.Generator) -> None:
        with torch.no_grad():
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

    def reset(self, gen: torch.Generator) -> None:
        with torch.no_grad():
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
    """A head whose initial state depends only on (seed, kind): every lr starts from the same point."""
    if kind == "linear":
        head: nn.Module = LinearHead(encoder_cfg.width, num_classes)
    elif kind == "attentive":
        head = AttentiveHead(encoder_cfg.width, attentive_heads(encoder_cfg.width, cfg.attentive_heads),
                             cfg.attentive_queries, num_classes)
    else:
        raise ValueError(f"probe kind {kind!r} is not allowed (allowed: 'linear', 'attentive')")
    head.reset(torch.Generator().manual_seed(_seed(seed, kind, "init")))
    return head


def make_optimizer(kind: str, head: nn.Module, lr: float, cfg: ProbeConfig) -> torch.optim.Optimizer:
    """AdamW per head. Linear: weight decay `linear_weight_decay` (0, the official protocol);
    attentive: `attentive_weight_decay` on matrices and queries, none on biases."""
    wd = cfg.linear_weight_decay if kind == "linear" else cfg.attentive_weight_decay
    params = [p for p in head.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(cfg.beta1, cfg.beta2), fused=True)


# ---------------------------------------------------------------------------------------------
# Schedule and seeds


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, cfg: ProbeConfig) -> float:
    """The official probe schedule: linear warmup from lr * warmup_start to lr over `warmup_steps`,
    then a cosine from lr down to cfg.min_lr at the last step."""
    if step < warmup_steps:
        return lr * (cfg.warmup_start + (1.0 - cfg.warmup_start) * step / warmup_steps)
    progress = (step - warmup_steps) / max(total_steps - 1 - warmup_steps, 1)
    return cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _seed(seed: int, kind: str, what: str, index: int = 0) -> int:
    """A seed from (seed, kind, what, index) only: never from the number of heads."""
    tag = zlib.crc32(f"{kind}/{what}".encode())
    return (seed * 1_000_003 + tag * 7_919 + index * 104_729 + 13) % (2**63 - 1)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches only (BatchNorm needs > 1 sample); a set smaller than a batch is one batch."""
    return max(n // batch_size, 1)


# ---------------------------------------------------------------------------------------------
# Head inputs: from the frozen encoder, or from a cache of them


def head_inputs(encoder: Encoder, images: torch.Tensor, kind: str, cfg: ProbeConfig) -> torch.Tensor:
    """What a head of `kind` sees: (B, D) mean-pooled last-block tokens (linear) or (B, T, D), the
    mean of the last `probe_layers` blocks' tokens (attentive); raw block outputs unless
    cfg.features == "normed". Frozen encoder, no grad."""
    return head_inputs_all(encoder, images, (kind,), cfg)[kind]


def head_inputs_all(encoder: Encoder, images: torch.Tensor, kinds: tuple[str, ...], cfg: ProbeConfig) -> dict:
    """Every kind's head inputs from ONE encoder pass (the last layer is shared by both kinds)."""
    n_layers = probe_layers(cfg, len(encoder.blocks))
    layers = tuple(range(-n_layers, 0)) if "attentive" in kinds else (-1,)
    with torch.no_grad(), _autocast(images.device):
        feats = encoder.features(images, layers=layers, mask=cfg.mask,
                                 norm=cfg.features == "normed")  # last entry: layer -1
    out = {}
    if "linear" in kinds:
        out["linear"] = feats[-1].float().mean(dim=1)  # (B, D)
    if "attentive" in kinds:
        out["attentive"] = torch.stack(feats).float().mean(dim=0) if len(feats) > 1 else feats[0].float()  # (B, T, D)
    return out


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def input_shape(kind: str, model_cfg: ModelConfig) -> tuple[int, ...]:
    return (model_cfg.width,) if kind == "linear" else (model_cfg.n_tokens, model_cfg.width)


def cache_mode(kind: str, cfg: ProbeConfig, n_images: int, model_cfg: ModelConfig) -> str:
    """memory | disk | off. Augmentation needs fresh features every step, so it never caches.
    auto: memory up to MEMORY_CACHE_BYTES for all splits together, disk up to DISK_CACHE_BYTES, else
    off (ImageNet-sized attentive token features are recomputed every epoch)."""
    if cfg.augment:
        return "off"
    if cfg.cache != "auto":
        return cfg.cache
    nbytes = 4 * n_images * math.prod(input_shape(kind, model_cfg))
    if nbytes <= MEMORY_CACHE_BYTES:
        return "memory"
    return "disk" if nbytes <= DISK_CACHE_BYTES else "off"


def _build_caches(encoder: Encoder, images: torch.Tensor, modes: dict[str, str], cfg: ProbeConfig,
                  device: torch.device, scratch: Path | None, name: str) -> dict[str, Any]:
    """Cache the head inputs of every kind in `modes` (memory | disk) for one split, in one encoder pass."""
    n = len(images)
    caches: dict[str, Any] = {}
    for kind, mode in modes.items():
        shape = (n, *input_shape(kind, encoder.cfg))
        if mode == "memory":
            caches[kind] = torch.empty(shape, dtype=torch.float32, device=device)
        else:
            assert scratch is not None
            caches[kind] = np.lib.format.open_memmap(scratch / f"{kind}-{name}.npy", mode="w+", dtype=np.float32,
                                                     shape=shape)
    for start in range(0, n, cfg.batch_size):
        chunk = images[start: start + cfg.batch_size].to(device, non_blocking=True)
        for kind, feats in head_inputs_all(encoder, chunk, tuple(modes), cfg).items():
            caches[kind][start: start + len(chunk)] = feats if modes[kind] == "memory" else feats.cpu().numpy()
    for kind, mode in modes.items():
        if mode == "disk":
            caches[kind].flush()
    return caches


class _Source:
    """Head inputs for one split, by index: gathered from a cache or computed by the encoder."""

    def __init__(self, encoder: Encoder, images: torch.Tensor, kind: str, cfg: ProbeConfig, device: torch.device,
                 mode: str, scratch: Path | None, name: str, augment: Callable | None = None, prebuilt: Any = None):
        self.encoder, self.images, self.kind, self.cfg, self.device = encoder, images, kind, cfg, device
        self.augment = augment
        self.cache: torch.Tensor | np.memmap | None = None
        if prebuilt is not None:
            self.cache = prebuilt
        elif mode in ("memory", "disk"):
            self.cache = _build_caches(encoder, images, {kind: mode}, cfg, device, scratch, name)[kind]
        elif device.type == "cuda" and not getattr(images, "lazy", False):  # uncached: keep in-memory images
            self.images = images.to(device)  # on the device and gather there (lazy ones decode on demand)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """Head inputs for `idx` (a CPU index tensor); `step` seeds the augmentation of training batches."""
        if isinstance(self.cache, torch.Tensor):
            return self.cache[idx.to(self.device)]
        if self.cache is not None:  # disk: read the rows in order, then put them back in batch order
            order = idx.argsort()
            rows = torch.from_numpy(np.ascontiguousarray(self.cache[idx[order].numpy()]))
            out = torch.empty_like(rows)
            out[order] = rows
            return out.to(self.device, non_blocking=True)
        from_files = getattr(self.augment, "from_files", None)
        if from_files is not None and step is not None:  # a streamed collection: crops cut from the files
            return head_inputs(self.encoder, from_files(self.images, idx, step), self.kind, self.cfg)
        images = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)
        if self.augment is not None and step is not None:
            images = self.augment(images, step)
        return head_inputs(self.encoder, images, self.kind, self.cfg)


# ---------------------------------------------------------------------------------------------
# Training and evaluation of N heads at once


@torch.no_grad()
def evaluate(heads: list[nn.Module], source: _Source, labels: torch.Tensor, batch_size: int) -> list[float]:
    """Top-1 of every head on a split; one pass over the inputs feeds all heads."""
    for head in heads:
        head.eval()
    correct = [0] * len(heads)
    labels = labels.to(source.device)
    for start in range(0, len(source), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(source)))
        x = source.batch(idx)
        y = labels[start: start + len(idx)]
        for i, head in enumerate(heads):
            correct[i] += int((head(x).argmax(dim=-1) == y).sum())
    for head in heads:
        head.train()
    return [c / max(len(source), 1) for c in correct]


def train_heads(kind: str, heads: list[nn.Module], lrs: tuple[float, ...], source: _Source, labels: torch.Tensor,
                cfg: ProbeConfig, seed: int, on_epoch: Callable[[int, int], None] | None = None) -> None:
    """Train every head for cfg.epochs on the same batches (one input computation per micro-batch).

    Each head has its own AdamW, follows `lr_at(step, ..., lr_i)`, and clips its own gradient norm:
    the heads share nothing but their (read-only) inputs, so each one is exactly what it would be if
    trained alone. A step of cfg.batch_size images is cfg.accumulate micro-batches (BatchNorm sees
    each micro-batch, as in the official code)."""
    optimizers = [make_optimizer(kind, head, lr, cfg) for head, lr in zip(heads, lrs)]
    n, bs = len(source), cfg.batch_size
    per_epoch = steps_per_epoch(n, bs)
    total, warmup = per_epoch * cfg.epochs, per_epoch * cfg.warmup_epochs
    labels = labels.to(source.device)
    for head in heads:
        head.train()
    step = 0
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(seed, kind, "shuffle", epoch)))
        for s in range(per_epoch):
            idx = perm[s * bs: (s + 1) * bs]
            for opt, lr in zip(optimizers, lrs):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, warmup, lr, cfg)
                opt.zero_grad(set_to_none=True)
            micro = idx.chunk(cfg.accumulate) if cfg.accumulate > 1 else (idx,)
            for j, part in enumerate(micro):
                x = source.batch(part, step * cfg.accumulate + j)
                y = labels[part.to(labels.device)]
                weight = len(part) / len(idx)  # the step's gradient is the mean over its images
                for head in heads:
                    (F.cross_entropy(head(x), y) * weight).backward()
            for head, opt in zip(heads, optimizers):
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
                opt.step()
            step += 1
            if on_epoch is not None and s == per_epoch - 1:
                on_epoch(epoch, step)


LBFGS_MAX_ITER = 1000  # full-batch iterations per head (each one pass over the cached train features)


def fit_linear_lbfgs(heads: list[nn.Module], l2s: tuple[float, ...], source: _Source, labels: torch.Tensor) -> None:
    """Solve each linear head to convergence on the cached train features: its BatchNorm (no affine
    part) takes the train split's mean and variance, which is what its running statistics estimate,
    so it standardizes; then its Linear layer minimizes mean cross-entropy + l2/2 |W|^2 by full-batch
    L-BFGS with a strong-Wolfe line search. The same head as `train_heads` trains, without the
    optimizer's noise: on correlated features AdamW needs far more epochs than a short probe has to
    get there (docs/bench-cpu-2core-probe.md)."""
    n = len(source)
    x = torch.cat([source.batch(torch.arange(i, min(i + 4096, n))) for i in range(0, n, 4096)])  # (N, D)
    y = labels.to(x.device)
    mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
    previous = None
    for i in sorted(range(len(heads)), key=lambda i: -l2s[i]):  # strongest penalty first: a warm start for the next
        head, l2 = heads[i], l2s[i]
        with torch.no_grad():
            head.bn.running_mean.copy_(mean)
            head.bn.running_var.copy_(var)
            if previous is not None:
                head.fc.load_state_dict(previous.fc.state_dict())
        head.eval()  # BatchNorm on the statistics just set
        with torch.no_grad():
            z = head.bn(x)
        opt = torch.optim.LBFGS(head.fc.parameters(), lr=1.0, max_iter=LBFGS_MAX_ITER, history_size=20,
                                tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure(head: nn.Module = head, opt: torch.optim.Optimizer = opt, l2: float = l2,
                    z: torch.Tensor = z) -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(head.fc(z), y) + 0.5 * l2 * head.fc.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        previous = head


def check_epochs(epochs: int) -> tuple[int, ...]:
    """Epochs (1-based) after which every head is scored on val: half-way, three quarters and the
    end. The last two tell whether a probe was still improving when it stopped."""
    return tuple(sorted({e for e in (epochs // 2, (3 * epochs) // 4, epochs) if e >= 1}))


IMPROVING_TOL = 0.0025  # a probe whose val top-1 rose by more than this over its last quarter is flagged


def still_improving(curve: dict[int, float], epochs: int) -> bool | None:
    """True when the chosen head's val top-1 rose by more than IMPROVING_TOL between three quarters
    of the schedule and its end (it would likely gain from more epochs); None for a 1-epoch probe."""
    marks = check_epochs(epochs)
    if len(marks) < 2:
        return None
    return curve[marks[-1]] - curve[marks[-2]] > IMPROVING_TOL


# ---------------------------------------------------------------------------------------------
# probe(): all kinds, all lrs, honest selection


def check_fits(model_cfg: ModelConfig, dataset, cfg: ProbeConfig | None = None) -> None:
    """One-line ValueError unless the dataset's images fit the encoder and no split is empty."""
    want = (model_cfg.channels, model_cfg.img_size, model_cfg.img_size)
    for split_name in ("train", "val", "test"):
        split = getattr(dataset, split_name)
        got = tuple(split.images.shape[1:])
        if got != want:
            raise ValueError(f"dataset {dataset.name!r} {split_name} images are {_shape_words(got)} but the encoder "
                             f"takes {_shape_words(want)}; load it with load_dataset(data_cfg, img_size="
                             f"{model_cfg.img_size}, channels={model_cfg.channels})")
        if len(split) == 0:
            raise ValueError(f"dataset {dataset.name!r} has an empty {split_name} split")


def _shape_words(shape: tuple) -> str:
    if len(shape) != 3:
        return f"shaped {shape}"
    c, h, w = shape
    return f"{c}-channel {h}x{w}"


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _augmenter(cfg: ProbeConfig, dataset, seed: int, kind: str, device: torch.device) -> Callable:
    """The official training augmentation of `kind` for normalized image batches (see
    `xtra.probe_augment.probe_augment`), seeded by (seed, kind, micro-batch)."""
    from xtra.probe_augment import after_crop, probe_augment

    def run(images: torch.Tensor, step: int) -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(_seed(seed, kind, "augment", step))
        return probe_augment(images, gen, kind, cfg, dataset.mean, dataset.std, dataset.hflip)

    if getattr(dataset.train.images, "lazy", False):
        from xtra.data.stream import Crop

        crop_seed = _seed(seed, kind, "crop")

        def from_files(images, idx: torch.Tensor, step: int) -> torch.Tensor:
            """A streamed collection's batch: RandomResizedCrop (bicubic) + flip cut from the decoded
            full-resolution files in the loader workers (sample j of micro-batch `step` seeded by
            (seed, kind, step, j)), then the rest of `probe_augment` on the device."""
            x = images.cropped(idx, Crop(crop_seed, step, cfg.crop_scale, cfg.crop_ratio, dataset.hflip)).to(device)
            gen = torch.Generator(device=device).manual_seed(_seed(seed, kind, "augment", step))
            return after_crop(x, gen, kind, cfg, dataset.mean, dataset.std)

        run.from_files = from_files  # type: ignore[attr-defined]
    return run


def train_probe(kind: str, encoder: Encoder, dataset, cfg: ProbeConfig, seed: int, *,
                data_cfg: DataConfig | None = None, cache_dir: Path | None = None, progress: bool = False,
                log: Log | None = None) -> tuple[list[nn.Module], dict[str, Any]]:
    """Train one head per lr in cfg.lrs on dataset.train (the encoder must be in eval mode).
    Returns (heads, info): info holds "val_top1" {lr: acc}, "best_lr", "best_index", "cache"."""
    heads, info, _ = _run_kind(kind, encoder, dataset, cfg, seed, data_cfg=data_cfg, cache_dir=cache_dir,
                               progress=progress, log=log, evaluate_test=False)
    return heads, info


def _run_kind(kind: str, encoder: Encoder, dataset, cfg: ProbeConfig, seed: int, *, data_cfg: DataConfig | None,
              cache_dir: Path | None, progress: bool, log: Log | None, evaluate_test: bool,
              shared: dict[str, dict[str, Any]] | None = None):
    """`shared`: {split: {kind: cache}} built by `probe` in one encoder pass for all kinds."""
    model_cfg = encoder.cfg
    device = _device_of(encoder)
    n_all = len(dataset.train) + len(dataset.val) + len(dataset.test)
    mode = cache_mode(kind, cfg, n_all, model_cfg)
    prebuilt = {split: caches[kind] for split, caches in (shared or {}).items() if kind in caches}
    if mode == "disk" and cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    scratch = (Path(tempfile.mkdtemp(prefix=f".probe-{kind}-", dir=cache_dir))
               if mode == "disk" and not prebuilt else None)
    t0 = time.perf_counter()
    try:
        augment = _augmenter(cfg, dataset, seed, kind, device) if cfg.augment else None
        train = _Source(encoder, dataset.train.images, kind, cfg, device, mode, scratch, "train", augment,
                        prebuilt.get("train"))
        val = _Source(encoder, dataset.val.images, kind, cfg, device, mode, scratch, "val", None, prebuilt.get("val"))
        t_cache = time.perf_counter() - t0
        lbfgs = kind == "linear" and cfg.linear_solver == "lbfgs"
        grid = cfg.linear_l2 if lbfgs else cfg.lrs  # one head per value, the best chosen on val
        heads = [make_head(kind, model_cfg, dataset.num_classes, cfg, seed).to(device) for _ in grid]
        shape = protocol(kind, model_cfg, cfg)
        if log:
            log(f"{kind} probe: {len(heads)} heads ("
                + (f"L-BFGS, l2 {', '.join(f'{v:g}' for v in grid)}" if lbfgs
                   else f"lrs {', '.join(f'{lr:g}' for lr in cfg.lrs)}") + f"), cache {mode}, "
                f"{len(train)} train / {len(val)} val images, {cfg.features} features"
                + (f", mean of the last {shape['layers']} blocks, {shape['heads']} attention heads"
                   + (f" (clamped from {cfg.attentive_heads} to divide width {model_cfg.width})"
                      if shape["heads"] != cfg.attentive_heads else "") if kind == "attentive" else ""))
        bar = _ProbeBar(kind, cfg.epochs * steps_per_epoch(len(train), cfg.batch_size), cfg) if progress else None
        marks = check_epochs(cfg.epochs)
        curves: dict[int, list[float]] = {}  # epoch -> val top-1 of every head

        def on_epoch(epoch: int, step: int) -> None:
            if bar is None and epoch + 1 not in marks:
                return
            accs = evaluate(heads, val, dataset.val.labels, cfg.batch_size)
            if epoch + 1 in marks:
                curves[epoch + 1] = accs
            if bar is not None:
                best = int(np.argmax(accs))
                bar.update(step, epoch + 1, accs[best], cfg.lrs[best])

        try:
            if lbfgs:
                fit_linear_lbfgs(heads, grid, train, dataset.train.labels)
                curves[cfg.epochs] = evaluate(heads, val, dataset.val.labels, cfg.batch_size)
            else:
                train_heads(kind, heads, cfg.lrs, train, dataset.train.labels, cfg, seed, on_epoch)
        finally:
            if bar is not None:
                bar.stop()
        val_acc = curves[cfg.epochs]  # scored after the last epoch
        best = int(np.argmax(val_acc))  # ties: the first value listed
        curve = {epoch: accs[best] for epoch, accs in curves.items()}
        info: dict[str, Any] = {"val_top1": {v: acc for v, acc in zip(grid, val_acc)},
                                "best_lr": None if lbfgs else cfg.lrs[best], "best_l2": grid[best] if lbfgs else None,
                                "best_index": best, "cache": mode, "cache_s": t_cache, "val_curve": curve,
                                "still_improving": None if lbfgs else still_improving(curve, cfg.epochs),
                                "lr_at_edge": len(grid) > 1 and grid[best] in (min(grid), max(grid)),
                                "solver": "lbfgs" if lbfgs else "adamw", **shape}
        test_acc = None
        if evaluate_test:  # only the head chosen on val ever sees the test split
            test = _Source(encoder, dataset.test.images, kind, cfg, device, mode, scratch, "test", None,
                           prebuilt.get("test"))
            test_acc = evaluate([heads[best]], test, dataset.test.labels, cfg.batch_size)[0]
        info["wall_s"] = time.perf_counter() - t0
        return heads, info, test_acc
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def limit_train(dataset, limit: int):
    """A fixed subset of the train split (seeded independently of the trial), so every trial of a
    study probes on the same images."""
    if not limit or limit >= len(dataset.train):
        return dataset
    from xtra.data import Split

    keep = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(0))[:limit].sort().values
    images = dataset.train.images
    images = images.subset(keep) if getattr(images, "lazy", False) else images[keep]  # lazy stays lazy
    return dataclasses.replace(dataset, train=Split(images, dataset.train.labels[keep]))


def probe(encoder: Encoder, dataset, cfg: ProbeConfig, seed: int, progress: bool = False,
          cache_dir: Path | None = None, *, data_cfg: DataConfig | None = None, log: Log | None = None) -> dict:
    """Probe the frozen `encoder` on `dataset` for every kind in cfg.kinds.

    Returns {kind: {"val_top1": {lr: acc}, "best_lr": lr, "best_val_top1": acc, "test_top1": acc (best lr only),
    "epochs": n, "cache": memory|disk|off, "val_curve": {epoch: val top-1 of the chosen lr},
    "still_improving": bool | None, "lr_at_edge": the chosen lr is the grid's smallest or largest
    (the grid may not hold the best lr: widen it), "layers": blocks averaged, "heads": attention heads (None for
    linear), "features": raw|normed}}; accuracies are fractions in [0, 1]. `data_cfg` is unused
    (kept for callers; the augmentation's parameters are in `cfg`)."""
    check_fits(encoder.cfg, dataset, cfg)
    dataset = limit_train(dataset, cfg.limit_train)
    was_training = encoder.training
    encoder.eval()
    results: dict[str, Any] = {}
    n_all = len(dataset.train) + len(dataset.val) + len(dataset.test)
    modes = {kind: cache_mode(kind, cfg, n_all, encoder.cfg) for kind in cfg.kinds}
    modes = {kind: mode for kind, mode in modes.items() if mode != "off"}
    scratch = None
    try:
        shared = None
        if len(modes) > 1:  # both probes cached: one encoder pass over each split feeds both
            if "disk" in modes.values():
                if cache_dir is not None:
                    Path(cache_dir).mkdir(parents=True, exist_ok=True)
                scratch = Path(tempfile.mkdtemp(prefix=".probe-shared-", dir=cache_dir))
            device = _device_of(encoder)
            shared = {split: _build_caches(encoder, getattr(dataset, split).images, modes, cfg, device, scratch, split)
                      for split in ("train", "val", "test")}
        for kind in cfg.kinds:
            _, info, test_acc = _run_kind(kind, encoder, dataset, cfg, seed, data_cfg=data_cfg, cache_dir=cache_dir,
                                          progress=progress, log=log, evaluate_test=True, shared=shared)
            results[kind] = {"val_top1": info["val_top1"], "best_lr": info["best_lr"], "best_l2": info["best_l2"],
                             "best_val_top1": max(info["val_top1"].values()), "solver": info["solver"],
                             "test_top1": test_acc,
                             "epochs": cfg.epochs, "cache": info["cache"], "val_curve": info["val_curve"],
                             "still_improving": info["still_improving"], "lr_at_edge": info["lr_at_edge"],
                             "layers": info["layers"],
                             "heads": info["heads"], "features": cfg.features}
    finally:
        encoder.train(was_training)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return results


class _ProbeBar:
    def __init__(self, kind: str, total: int, cfg: ProbeConfig):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"{kind} probe"), TextColumn("epoch {task.fields[epoch]}/" + str(cfg.epochs)), BarColumn(),
            MofNCompleteColumn(), TextColumn("best val top-1 {task.fields[acc]} (lr {task.fields[lr]})"),
            TimeRemainingColumn())
        self.task = self.progress.add_task(kind, total=total, epoch=0, acc="-", lr="-")
        self.progress.start()

    def update(self, step: int, epoch: int, acc: float, lr: float) -> None:
        self.progress.update(self.task, completed=step, epoch=epoch, acc=f"{acc:.4f}", lr=f"{lr:g}")

    def stop(self) -> None:
        self.progress.stop()


# ---------------------------------------------------------------------------------------------
# probe_run(): a run directory in, probe.json out


def run_configs(state: dict, path: Path) -> tuple[ModelConfig, DataConfig, int]:
    """(model config, data config, seed) stored in a checkpoint; CheckpointError if unusable."""
    stored = state.get("config")
    if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
        raise CheckpointError(f"{path}: checkpoint has no stored model config "
                              "(expected one written by `xtra pretrain`)")
    try:
        model_cfg = override(ModelConfig(), stored["model"])
        data_cfg = override(DataConfig(), stored.get("data") or {})
    except ValueError as err:
        raise CheckpointError(f"{path}: stored config is not valid for this version ({err})") from None
    return model_cfg, data_cfg, int(stored.get("seed", 0))


def _check_expected(model_cfg: ModelConfig, expect: ModelConfig, path: Path) -> None:
    if model_cfg == expect:
        return
    a, b = dataclasses.asdict(model_cfg), dataclasses.asdict(expect)
    diff = [f"model.{k} (checkpoint {a[k]!r}, expected {b[k]!r})" for k in sorted(a) if a[k] != b[k]]
    raise CheckpointError(f"{path}: checkpoint was written for a different model config (differs in: "
                          f"{', '.join(diff)})")


def load_encoder(state: dict, model_cfg: ModelConfig, path: Path) -> Encoder:
    """The pretrained encoder from a checkpoint's XTRA state dict."""
    prefix = "encoder."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
    encoder = Encoder(model_cfg)
    try:
        encoder.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: encoder weights do not fit the stored model config ({first[:200]})") from None
    return encoder


def random_encoder(model_cfg: ModelConfig, seed: int) -> Encoder:
    """An untrained encoder initialized exactly as `pretrain(..., seed=seed)` starts."""
    from xtra.pretrain import step_seed

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(step_seed(seed, -1))
        return XTRA(model_cfg).encoder


def probe_run(run_dir: Path, data_cfg: DataConfig | None = None, cfg: ProbeConfig = ProbeConfig(), seed: int = 0,
              random_init: bool = False, *, expect_model: ModelConfig | None = None, dataset=None,
              data_name: str | None = None, device: str = "auto", progress: bool = False,
              cache_dir: Path | None = None, log: Log | None = None) -> dict:
    """Probe the encoder in `run_dir/checkpoint.pt` and write `run_dir/probe.json` atomically
    (`probe-random.json` with random_init: an untrained encoder of the same config, initialized
    as the run's pretraining started, the floor for every report).

    `data_cfg` defaults to the run's own data config (`data_name`: the run's data config with
    another dataset name); `dataset` (an already loaded `xtra.data.Dataset`) replaces loading.
    Every input is checked before any compute: a missing or foreign checkpoint (CheckpointError),
    a model config other than `expect_model`, a dataset that is missing or whose images do not
    fit the encoder (ValueError, one line each).
    Returns probe()'s dict plus "meta"."""
    from xtra.pretrain import resolve_device

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    if sum(x is not None for x in (data_cfg, dataset, data_name)) > 1:
        raise ValueError("give probe_run at most one of data_cfg, data_name and dataset")
    if random_init and not path.is_file() and expect_model is not None:
        state, model_cfg, run_data, run_seed, samples = None, expect_model, None, seed, 0
    else:
        state = load_checkpoint(path)
        model_cfg, run_data, run_seed = run_configs(state, path)
        samples = int(state.get("samples_seen", 0))
        if expect_model is not None:
            _check_expected(model_cfg, expect_model, path)
    torch_device = resolve_device(device)
    if dataset is None:
        from xtra.data import load_dataset, locate

        data_cfg = data_cfg or run_data
        if data_cfg is None:
            raise ValueError("random_init without a checkpoint needs data_cfg (which dataset to probe on)")
        if data_name is not None:
            data_cfg = dataclasses.replace(data_cfg, name=data_name)
        locate(data_cfg)  # one-line DatasetNotFound before anything else is loaded
        dataset = load_dataset(data_cfg, model_cfg.img_size, model_cfg.channels)
    check_fits(model_cfg, dataset, cfg)

    if random_init:
        encoder = random_encoder(model_cfg, run_seed)
    else:
        assert state is not None
        encoder = load_encoder(state, model_cfg, path)
    del state
    encoder = encoder.to(torch_device).eval().requires_grad_(False)
    t0 = time.perf_counter()
    results = probe(encoder, dataset, cfg, seed, progress=progress, cache_dir=cache_dir, data_cfg=data_cfg, log=log)
    out = run_dir / (PROBE_RANDOM_JSON if random_init else PROBE_JSON)
    results["meta"] = {
        "run_dir": str(run_dir), "checkpoint": str(path), "samples_seen": 0 if random_init else samples,
        "random_init": random_init, "seed": seed, "init_seed": run_seed if random_init else None,
        "data": dataset.name, "n_train": len(dataset.train), "n_val": len(dataset.val), "n_test": len(dataset.test),
        "num_classes": dataset.num_classes, "probe": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg),
        "device": str(torch_device), "wall_s": round(time.perf_counter() - t0, 4), "path": str(out),
    }
    atomic_write_json(out, results)
    return results


# ---------------------------------------------------------------------------------------------
# probe_checkpoints(): a trial's checkpoints x the probe datasets x the kinds, long-format rows


def probe_data_configs(probe_cfg: ProbeConfig, data_cfg: DataConfig, model_cfg: ModelConfig) -> dict[str, DataConfig]:
    """{dataset name: data config} for every probe dataset (`probe.datasets`, or the trial's own
    data), each checked before any work: a missing set, or one whose images cannot be brought to the
    encoder's size and channels, is a one-line ValueError naming `probe.datasets`."""
    from xtra.data import locate

    names = probe_cfg.datasets or (data_cfg.name,)
    if model_cfg.channels not in (1, 3):
        raise ValueError(f"probe.datasets: the encoder takes {model_cfg.channels}-channel images; probe sets "
                         "can be brought to 1 or 3 channels only (allowed model.channels: 1, 3)")
    out: dict[str, DataConfig] = {}
    for i, name in enumerate(names):
        try:
            cfg = data_cfg if name == data_cfg.name else DataConfig(
                name=name, val_fraction=data_cfg.val_fraction, split_seed=data_cfg.split_seed,
                augment=False, hflip="auto", workers=data_cfg.workers, skip_bad=data_cfg.skip_bad)
            locate(cfg)
        except ValueError as err:  # DatasetNotFound, a bad name, an empty image folder
            raise ValueError(f"probe.datasets[{i}]={name!r}: {err}") from None
        out[name] = cfg
    return out


def _load_probe_set(name: str, data_cfg: DataConfig, model_cfg: ModelConfig, index: int):
    from xtra.data import load_dataset

    try:
        dataset = load_dataset(data_cfg, model_cfg.img_size, model_cfg.channels)
        check_fits(model_cfg, dataset)
    except ValueError as err:  # e.g. 4-channel files, an empty split
        raise ValueError(f"probe.datasets[{index}]={name!r}: {err}") from None
    return dataset


def probe_checkpoints(paths_by_samples: dict[int, Path | str], data_cfg: DataConfig, probe_cfg: ProbeConfig,
                      seed: int, *, expect_model: ModelConfig | None = None, device: str = "auto",
                      cache_dir: Path | None = None, log: Log | None = None,
                      done: dict[tuple[int, str], list[dict[str, Any]]] | None = None,
                      on_point: Callable[[int, str, list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Probe a trial's checkpoints ({samples seen: checkpoint path}) on every probe dataset: the last
    (largest samples) with every kind of `probe.kinds`, the earlier ones with `probe.along_kinds`.
    Returns long-format rows, one per (samples, dataset, kind), sorted that way:
    {"samples", "dataset", "kind", "top1" (test, the lr chosen on val), "best_lr", "best_val_top1",
    "still_improving", "lr_at_edge", "epochs", "layers", "heads", "features", "n_train", "n_test", "num_classes",
    "wall_s"}. `data_cfg` is the trial's data (its own set is probed with its split settings).

    Every input is checked before any compute: each checkpoint exists and is an xtra checkpoint of
    one model config (`expect_model` if given), each probe dataset is found and fits. Nothing is
    written; the caller stores the rows: `on_point(samples, dataset, rows)` hears each (checkpoint,
    dataset) as it finishes, and `done` ({(samples, dataset): rows}) holds those a resumed call skips."""
    from xtra.pretrain import resolve_device

    if not paths_by_samples:
        raise ValueError("probe_checkpoints: no checkpoints given (expected {samples_seen: path})")
    states: dict[int, Path] = {}
    model_cfg = expect_model
    for samples, path in sorted(paths_by_samples.items()):
        path = Path(path)
        state = load_checkpoint(path)  # CheckpointError: missing, corrupt, foreign
        cfg_here, _, _ = run_configs(state, path)
        if model_cfg is None:
            model_cfg = cfg_here
        _check_expected(cfg_here, model_cfg, path)
        states[int(samples)] = path
        del state
    assert model_cfg is not None
    sets = probe_data_configs(probe_cfg, data_cfg, model_cfg)
    datasets = {name: _load_probe_set(name, cfg, model_cfg, i) for i, (name, cfg) in enumerate(sets.items())}
    torch_device = resolve_device(device)
    rows: list[dict[str, Any]] = []
    end = max(states)
    # Earlier checkpoints: only `along_kinds` (of `kinds`; all kinds if none of them is listed)
    along = tuple(k for k in probe_cfg.kinds if k in probe_cfg.along_kinds) or probe_cfg.kinds
    done = done or {}
    for samples, path in states.items():
        cfg = probe_cfg if samples == end else dataclasses.replace(probe_cfg, kinds=along)
        todo = [name for name in datasets if (samples, name) not in done]
        encoder = (load_encoder(load_checkpoint(path), model_cfg, path).to(torch_device).eval().requires_grad_(False)
                   if todo else None)
        for name, dataset in datasets.items():
            if name not in todo:
                rows.extend(done[(samples, name)])
                continue
            t0 = time.perf_counter()
            if log:
                log(f"probing the checkpoint at {samples} samples on {name} ({', '.join(cfg.kinds)})")
            result = probe(encoder, dataset, cfg, seed, cache_dir=cache_dir, log=log)
            wall = time.perf_counter() - t0
            point = []
            for kind in cfg.kinds:
                r = result[kind]
                point.append({"samples": samples, "dataset": name, "kind": kind, "top1": r["test_top1"],
                             "best_lr": r["best_lr"], "best_l2": r.get("best_l2"), "solver": r.get("solver"),
                             "best_val_top1": r["best_val_top1"],
                             "still_improving": r["still_improving"], "lr_at_edge": r["lr_at_edge"],
                             "epochs": r["epochs"], "layers": r["layers"],
                             "heads": r["heads"], "features": r["features"],
                             "n_train": len(limit_train(dataset, probe_cfg.limit_train).train),
                             "n_test": len(dataset.test), "num_classes": dataset.num_classes,
                             "wall_s": round(wall, 4)})
            rows.extend(point)
            if on_point is not None:
                on_point(samples, name, point)
        del encoder
    return rows
