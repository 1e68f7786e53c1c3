"""Per-image decode and transforms for path-based collections, run in loader worker processes.

Training: torchvision's RandomResizedCrop (area fraction uniform in ``crop_scale``, aspect ratio
log-uniform in ``crop_ratio``, 10 tries then a centre crop), cut from the decoded full-resolution
image and resampled bicubic to ``size`` x ``size``, then a horizontal flip with p = 0.5. Evaluation:
the shorter side resized (bicubic) to ``floor(size / 0.8533)`` (300 for 256), then a centre crop.

The crop box is drawn in full-resolution coordinates first; a JPEG is then decoded at the smallest
DCT scale (1/2, 1/4, 1/8: Pillow's ``draft``) that still leaves the box at least twice the output
size, so a 32 px crop of a 500x375 photo does not pay for decoding every pixel, while a 256 px crop
of it decodes at full scale. Pillow resizes the box with proper antialiasing (``resize(box=...)``).

Every random draw comes from a numpy Generator the caller seeds per sample, so a sample's crop is
the same whichever worker or rank decodes it. Pillow is imported inside the functions.
"""

from __future__ import annotations

import io
import math

import numpy as np

# ImageNet statistics (torchvision / timm), used for every natural-image collection.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, Pillow's "L"
EVAL_CROP_PCT = 0.8533  # 256 / 300


def natural_stats(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for RGB; for one channel, the luminance of the mean and the luma-weighted std."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    mean = sum(w * m for w, m in zip(_LUMA, IMAGENET_MEAN))
    std = sum(w * s for w, s in zip(_LUMA, IMAGENET_STD))
    return (round(mean, 6),), (round(std, 6),)


def eval_resize(size: int) -> int:
    """The shorter side before the evaluation centre crop: floor(size / 0.8533), e.g. 256 -> 300."""
    return max(size, math.floor(size / EVAL_CROP_PCT))


def crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
             rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a RandomResizedCrop, exactly torchvision's algorithm."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height  # fallback: a centre crop at the nearest allowed ratio
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _open(data: bytes):
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    return im


def _draft(im, box_w: int, box_h: int, size: int) -> tuple[float, float]:
    """Decode a JPEG at a reduced DCT scale where the box keeps >= 2x the output size. Returns the
    factors (x, y) from full-resolution to decoded coordinates ((1, 1) when not reduced)."""
    if im.format != "JPEG":
        return 1.0, 1.0
    full_w, full_h = im.size
    reduce = min(box_w, box_h) / (2 * size)  # how much smaller the whole image may become
    if reduce < 2:
        return 1.0, 1.0
    im.draft(im.mode if im.mode in ("RGB", "L") else None, (math.ceil(full_w / reduce), math.ceil(full_h / reduce)))
    return im.size[0] / full_w, im.size[1] / full_h


def _to_mode(im, channels: int):
    mode = "RGB" if channels == 3 else "L"
    if im.mode == mode:
        return im
    if im.mode in ("RGBA", "LA", "P", "PA") and mode == "RGB":
        return im.convert("RGBA").convert("RGB") if im.mode != "P" else im.convert("RGB")
    return im.convert(mode)


def _array(im, channels: int) -> np.ndarray:
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)  # (C, S, S)


def train_image(data: bytes, size: int, channels: int, scale: tuple[float, float], ratio: tuple[float, float],
                hflip: bool, rng: np.random.Generator, augment: bool = True, fast: bool = True) -> np.ndarray:
    """Decode one image and return its augmented (C, size, size) uint8 array. ``augment=False``
    gives the evaluation transform. ``fast=False`` never decodes at a reduced scale (for the bench)."""
    from PIL import Image

    if not augment:
        return eval_image(data, size, channels)
    with _open(data) as im:
        width, height = im.size
        left, top, w, h = crop_box(width, height, scale, ratio, rng)
        flip = hflip and rng.random() < 0.5
        fx, fy = _draft(im, w, h, size) if fast else (1.0, 1.0)
        im = _to_mode(im, channels)
        box = (left * fx, top * fy, min((left + w) * fx, im.size[0]), min((top + h) * fy, im.size[1]))
        out = im.resize((size, size), Image.Resampling.BICUBIC, box=box)
        if flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _array(out, channels)


def eval_image(data: bytes, size: int, channels: int) -> np.ndarray:
    """Shorter side to floor(size / 0.8533) (bicubic), centre crop size x size: deterministic."""
    from PIL import Image

    with _open(data) as im:
        width, height = im.size
        short = eval_resize(size)
        s = short / min(width, height)
        new_w, new_h = max(short, round(width * s)), max(short, round(height * s))
        if im.format == "JPEG" and min(width, height) >= 4 * short:
            im.draft(im.mode if im.mode in ("RGB", "L") else None, (new_w * 2, new_h * 2))
        im = _to_mode(im, channels)
        im = im.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        out = im.crop((left, top, left + size, top + size))
        return _array(out, channels)


def verify_image(data: bytes) -> None:
    """Decode every pixel (raises on truncated or unreadable files)."""
    with _open(data) as im:
        im.load()


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of one sample's augmentation: a function of (trial seed, epoch, position in the
    epoch) only, never of the worker or rank that decodes it."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, position, 0x58545241])
