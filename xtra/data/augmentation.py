"""The batched on-device augmentation of in-memory sets (random resized crop + flip, seeded by a
generator) and ``denormalize`` for display.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xtra.config import DataConfig
from xtra.data.memory import Dataset


def augment(images: torch.Tensor, generator: torch.Generator, cfg: DataConfig, hflip: bool) -> torch.Tensor:
    """Random resized crop + optional horizontal flip for a batch, on ``images.device``.

    Like torchvision's RandomResizedCrop: the crop's area fraction is uniform in ``cfg.crop_scale`` and
    its aspect ratio log-uniform in ``cfg.crop_ratio`` (sides clipped to the image); the crop is
    resampled bilinearly back to H x W. With ``hflip`` each image is mirrored with p = 0.5. All
    randomness comes from ``generator`` (which must live on ``images.device``): the same generator
    state gives the same output. Always augments; whether to call it (``cfg.augment``) is the caller's.
    """
    if images.ndim != 4:
        raise ValueError(f"augment expects (B, C, H, W) images, got shape {tuple(images.shape)}")
    b = images.shape[0]
    if b == 0:
        return images
    u = torch.rand(b, 5, generator=generator, device=images.device, dtype=torch.float32)  # (B, 5)
    lo, hi = cfg.crop_scale
    area = lo + (hi - lo) * u[:, 0]
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)  # crop centre in [-1, 1] coordinates, crop kept inside
    cy = (1 - h) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0) if hflip else torch.ones_like(w)
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([w * flip, zero, cx], dim=1),
                         torch.stack([zero, h, cy], dim=1)], dim=1)  # (B, 2, 3): output -> input coords
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    grid = F.affine_grid(theta.to(work.dtype), list(work.shape), align_corners=False)  # (B, H, W, 2)
    out = F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(images.dtype)


def denormalize(images: torch.Tensor, dataset: Dataset) -> torch.Tensor:
    """Normalized images (..., C, H, W) back to pixel values in [0, 1]."""
    c = len(dataset.mean)
    if images.ndim < 3 or images.shape[-3] != c:
        raise ValueError(f"denormalize expects (..., {c}, H, W) images for {dataset.name}, got {tuple(images.shape)}")
    mean = torch.tensor(dataset.mean, dtype=images.dtype, device=images.device).view(c, 1, 1)
    std = torch.tensor(dataset.std, dtype=images.dtype, device=images.device).view(c, 1, 1)
    return (images * std + mean).clamp(0, 1)
