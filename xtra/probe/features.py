"""Head inputs from the frozen encoder, and caches of them (in memory or a scratch `np.memmap`):
one encoder pass per split feeds every kind."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xtra.config import ModelConfig, ProbeConfig
from xtra.model import Encoder
from xtra.precision import autocast
from xtra.probe.heads import probe_layers

MEMORY_CACHE_BYTES = 4 << 30  # auto: cache train+val+test head inputs in memory up to 4 GiB,
DISK_CACHE_BYTES = 64 << 30  # then on disk up to 64 GiB (e.g. attentive tokens of Fashion-MNIST), else recompute


def head_inputs(encoder: Encoder, images: torch.Tensor, kind: str, cfg: ProbeConfig) -> torch.Tensor:
    """What a head of `kind` sees: (B, D) mean-pooled last-block tokens (linear) or (B, T, D), the
    mean of the last `probe_layers` blocks' tokens (attentive); raw block outputs unless
    cfg.features == "normed". Frozen encoder, no grad."""
    return head_inputs_all(encoder, images, (kind,), cfg)[kind]


def head_inputs_all(encoder: Encoder, images: torch.Tensor, kinds: tuple[str, ...], cfg: ProbeConfig) -> dict:
    """Every kind's head inputs from ONE encoder pass (the last layer is shared by both kinds)."""
    n_layers = probe_layers(cfg, len(encoder.blocks))
    layers = tuple(range(-n_layers, 0)) if "attentive" in kinds else (-1,)
    with torch.no_grad(), autocast(images.device, cfg.feature_dtype):
        feats = encoder.features(images, layers=layers, mask=cfg.mask,
                                 norm=cfg.features == "normed")  # last entry: layer -1
    out = {}
    if "linear" in kinds:
        out["linear"] = feats[-1].float().mean(dim=1)  # (B, D)
    if "attentive" in kinds:
        out["attentive"] = torch.stack(feats).float().mean(dim=0) if len(feats) > 1 else feats[0].float()  # (B, T, D)
    return out


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


def build_caches(encoder: Encoder, images: torch.Tensor, modes: dict[str, str], cfg: ProbeConfig,
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


class Source:
    """Head inputs for one split, by index: gathered from a cache or computed by the encoder."""

    def __init__(self, encoder: Encoder, images: torch.Tensor, kind: str, cfg: ProbeConfig, device: torch.device,
                 mode: str, scratch: Path | None, name: str, augment: Callable | None = None, prebuilt: Any = None):
        self.encoder, self.images, self.kind, self.cfg, self.device = encoder, images, kind, cfg, device
        self.augment = augment
        self.cache: torch.Tensor | np.memmap | None = None
        if prebuilt is not None:
            self.cache = prebuilt
        elif mode in ("memory", "disk"):
            self.cache = build_caches(encoder, images, {kind: mode}, cfg, device, scratch, name)[kind]
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

    def transform_(self, weight: torch.Tensor, bias: torch.Tensor, chunk: int = 1024) -> None:
        """Replace every cached row x by x @ weight + bias, in place (memory or disk), `chunk` rows at a
        time: a fixed linear map of the head inputs (the whitening) paid once instead of every step."""
        if self.cache is None:
            raise ValueError("whitening needs cached head inputs (allowed: probe.cache=auto|memory|disk, "
                             "probe.augment=false)")
        for start in range(0, len(self.cache), chunk):
            rows = torch.as_tensor(self.cache[start: start + chunk], device=weight.device)
            out = rows @ weight + bias
            if isinstance(self.cache, torch.Tensor):
                self.cache[start: start + chunk] = out
            else:
                self.cache[start: start + chunk] = out.cpu().numpy()


class Whitening:
    """The attentive head's preconditioner (`probe.attentive_whiten`): each token feature x (a row of D
    channels) becomes z = ((x - mean) / std) @ P, with mean and std per channel over every token of the
    train split and P = C^(-1/2) (symmetric, ZCA) for C the covariance of the standardized tokens, so
    the train tokens have identity covariance. The head on z is the same function class as the head on
    x (its key and value maps absorb any invertible linear map, and a shift of every token moves no
    attention weight), so only AdamW's conditioning changes; `fold` turns a head trained on z back into
    the official head on x. Eigenvalues are floored at 1e-6 of the largest (a degenerate channel stays
    finite)."""

    def __init__(self, train: Source, chunk: int = 1024):
        cache = train.cache
        if cache is None:
            raise ValueError("whitening needs cached head inputs (allowed: probe.cache=auto|memory|disk, "
                             "probe.augment=false)")
        d = cache.shape[-1]
        total, n = torch.zeros(d, dtype=torch.float64), 0
        for start in range(0, len(cache), chunk):  # the mean over every train token, summed in float64
            rows = torch.as_tensor(cache[start: start + chunk]).reshape(-1, d).cpu()  # (chunk*T, D)
            total += rows.sum(dim=0).double()  # float32 within a chunk: a float64 reduction is ~20x slower
            n += len(rows)
        mean = total / n
        sq, centre = torch.zeros(d, d, dtype=torch.float64), mean.float()
        for start in range(0, len(cache), chunk):  # then the covariance of the centred tokens: float32 products
            rows = torch.as_tensor(cache[start: start + chunk]).reshape(-1, d).cpu() - centre  # per chunk, summed
            sq += (rows.t() @ rows).double()  # in float64 (several times faster than float64 products)
        shift = mean - centre.double()  # what float32 rounding left of the mean
        cov_x = sq / n - torch.outer(shift, shift)  # (D, D)
        var = cov_x.diagonal().clamp_min(1e-12)
        std = var.sqrt()
        corr = cov_x / torch.outer(std, std)  # the covariance of the standardized tokens
        evals, evecs = torch.linalg.eigh(corr)
        evals = evals.clamp_min(float(evals.max()) * 1e-6)
        p = (evecs * evals.rsqrt()) @ evecs.t()  # (D, D)
        device = train.device
        self.mean, self.var = mean.float().to(device), var.float().to(device)
        self.weight = (p / std[:, None]).float().to(device)  # z = x @ weight + bias
        self.bias = (-(mean / std) @ p).float().to(device)

    def apply_(self, *sources: Source) -> None:
        for source in sources:
            source.transform_(self.weight, self.bias)

    @torch.no_grad()
    def fold(self, head) -> None:
        """Turn `head` (an AttentiveHead trained on whitened tokens, read in eval mode: its BatchNorm at
        its running statistics) into the same function of the raw tokens: its BatchNorm takes the raw
        train statistics and its key / value maps and classifier bias absorb the rest. Exact up to float
        rounding (tested)."""
        bn = head.bn
        s_z = (bn.running_var + bn.eps).sqrt()  # the trained head's normalization of z
        s_x = (self.var + bn.eps).sqrt()  # the folded head's normalization of x
        # u = BN_z(z) = BN_x(x) @ m + d  with  m = diag(s_x) W diag(1/s_z),  d = (mean W + b - mean_z) / s_z
        m = (s_x[:, None] * self.weight) / s_z[None, :]  # (D, D)
        d = (self.mean @ self.weight + self.bias - bn.running_mean) / s_z  # (D,)
        shift = head.v.weight @ d  # every token moves by d: the keys' shift moves no attention weight, the
        head.fc.bias += head.fc.weight @ shift  # values' shift moves the pooled vector by W_v d (weights sum to 1)
        head.k.weight.copy_(head.k.weight @ m.t())
        head.v.weight.copy_(head.v.weight @ m.t())
        bn.running_mean.copy_(self.mean)
        bn.running_var.copy_(self.var)

