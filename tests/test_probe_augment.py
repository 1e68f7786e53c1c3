"""The probes' augmentation ops against their definitions: Pillow itself for every RandAugment op,
timm's level functions and RandomErasing's geometry, the batch pipeline's determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from xtra.config import ProbeConfig
from xtra.probe import augment as pa

RNG = np.random.default_rng(0)


def _images(c: int, n: int = 3) -> list[np.ndarray]:
    """Random 8-bit images with a flat patch (so smoothing/contrast see structure), 12x10."""
    out = []
    for _ in range(n):
        a = RNG.integers(0, 256, (12, 10, c) if c == 3 else (12, 10), dtype=np.uint8)
        a[3:7, 2:6] = RNG.integers(40, 200)
        lo, hi = sorted(RNG.integers(0, 256, 2))
        out.append(np.clip(a, lo, max(hi, lo + 1)).astype(np.uint8))  # various ranges for autocontrast
    return out


def _tensor(a: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(a.astype(np.float32))
    return (x.permute(2, 0, 1) if x.ndim == 3 else x[None])[None]  # (1, C, H, W)


def _array(x: torch.Tensor) -> np.ndarray:
    return (x[0].permute(1, 2, 0) if x.shape[1] == 3 else x[0, 0]).numpy().astype(int)


def _one(v: float) -> torch.Tensor:
    return torch.tensor([float(v)])


FILL = 128
PIXEL_OPS = [
    ("autocontrast", lambda p: ImageOps.autocontrast(p), lambda x: pa.auto_contrast(x)),
    ("equalize", lambda p: ImageOps.equalize(p), lambda x: pa.equalize(x)),
    ("invert", lambda p: ImageOps.invert(p), lambda x: pa.invert(x)),
    ("posterize", lambda p: ImageOps.posterize(p, 3), lambda x: pa.posterize(x, _one(3))),
    ("solarize", lambda p: ImageOps.solarize(p, 100), lambda x: pa.solarize(x, _one(100))),
    ("color+", lambda p: ImageEnhance.Color(p).enhance(1.7), lambda x: pa.color(x, _one(1.7))),
    ("color-", lambda p: ImageEnhance.Color(p).enhance(0.3), lambda x: pa.color(x, _one(0.3))),
    ("contrast+", lambda p: ImageEnhance.Contrast(p).enhance(1.7), lambda x: pa.contrast(x, _one(1.7))),
    ("contrast-", lambda p: ImageEnhance.Contrast(p).enhance(0.2), lambda x: pa.contrast(x, _one(0.2))),
    ("brightness", lambda p: ImageEnhance.Brightness(p).enhance(1.6), lambda x: pa.brightness(x, _one(1.6))),
    ("sharpness+", lambda p: ImageEnhance.Sharpness(p).enhance(1.8), lambda x: pa.sharpness(x, _one(1.8))),
    ("sharpness-", lambda p: ImageEnhance.Sharpness(p).enhance(0.1), lambda x: pa.sharpness(x, _one(0.1))),
]


def _fill(p: Image.Image):
    return (FILL,) * 3 if p.mode == "RGB" else FILL


GEOMETRIC_OPS = [
    ("rotate90", lambda p: p.rotate(90, resample=Image.BILINEAR, fillcolor=_fill(p)),
     lambda x, f: pa.rotate(x, _one(90), f)),
    ("rotate-17", lambda p: p.rotate(-17, resample=Image.BILINEAR, fillcolor=_fill(p)),
     lambda x, f: pa.rotate(x, _one(-17), f)),
    ("shear_x", lambda p: p.transform(p.size, Image.AFFINE, (1, 0.27, 0, 0, 1, 0), resample=Image.BILINEAR,
                                      fillcolor=_fill(p)), lambda x, f: pa.shear_x(x, _one(0.27), f)),
    ("shear_y", lambda p: p.transform(p.size, Image.AFFINE, (1, 0, 0, -0.2, 1, 0), resample=Image.BILINEAR,
                                      fillcolor=_fill(p)), lambda x, f: pa.shear_y(x, _one(-0.2), f)),
    ("translate", lambda p: p.transform(p.size, Image.AFFINE, (1, 0, 3.6, 0, 1, -2.3), resample=Image.BILINEAR,
                                        fillcolor=_fill(p)), lambda x, f: pa.translate(x, _one(3.6), _one(-2.3), f)),
]


@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_ops_equal_pillow(channels):
    for a in _images(channels):
        for name, pil_op, ours in PIXEL_OPS:
            want = np.asarray(pil_op(Image.fromarray(a))).astype(int)
            got = _array(ours(_tensor(a)))
            diff = np.abs(want - got)
            assert diff.max() == 0, (name, channels, diff.max())  # bit-exact


@pytest.mark.parametrize("channels", [1, 3])
def test_geometric_ops_equal_pillow_bilinear(channels):
    fill = torch.full((channels,), float(FILL))
    for a in _images(channels):
        for name, pil_op, ours in GEOMETRIC_OPS:
            want = np.asarray(pil_op(Image.fromarray(a))).astype(int)
            got = _array(ours(_tensor(a), fill))
            diff = np.abs(want - got)
            assert diff.max() <= 1 and (diff > 0).mean() < 0.05, (name, channels, diff.max(), (diff > 0).mean())
            if name == "rotate90" and a.shape[0] == a.shape[1]:
                np.testing.assert_array_equal(got, np.rot90(a))


def test_timm_level_functions_and_zero_bit_posterize():
    x = torch.full((1, 1, 4, 4), 200.0)
    gen = torch.Generator().manual_seed(0)
    fill = torch.tensor([0.0])
    level = torch.tensor([10.0])
    assert pa.apply_op("PosterizeIncreasing", x, level, gen, fill).max() == 0  # 4 - int(4) = 0 bits: black
    assert pa.apply_op("PosterizeIncreasing", x, torch.tensor([0.0]), gen, fill).max() == 192  # 4 bits: 200 -> 192
    assert torch.equal(pa.apply_op("SolarizeIncreasing", x, torch.tensor([0.0]), gen, fill), x)  # threshold 256
    assert pa.apply_op("SolarizeIncreasing", x, level, gen, fill).max() == 55  # threshold 0: all inverted
    low = torch.full((1, 1, 4, 4), 100.0)
    assert pa.apply_op("SolarizeAdd", low, torch.tensor([5.0]), gen, fill).max() == 155  # + int(0.5 * 110)
    # Enhance factors are 1 +- level/10 * 0.9: level 10 brightness is x0.1 or x1.9
    outs = {float(pa.apply_op("BrightnessIncreasing", low, level, gen, fill).max()) for _ in range(20)}
    assert outs == {10.0, 190.0}


def test_posterize_keeps_the_top_bits():
    x = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16)
    for bits in range(1, 9):
        want = torch.tensor([v & ~(2 ** (8 - bits) - 1) for v in range(256)], dtype=torch.float32).view(1, 1, 16, 16)
        assert torch.equal(pa.posterize(x, torch.tensor([float(bits)])), want)


def test_rand_augment_is_seeded_quantized_and_changes_about_the_expected_share():
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    x = torch.rand(400, 3, 16, 16)
    a = pa.rand_augment(x, gen(), "rand-m9-mstd0.5-inc1", (0.5, 0.5, 0.5))
    b = pa.rand_augment(x, gen(), "rand-m9-mstd0.5-inc1", (0.5, 0.5, 0.5))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(torch.round(a * 255), a * 255)  # on the 8-bit grid
    quantized = torch.floor(x * 255 + 0.5) / 255
    untouched = (a == quantized).flatten(1).all(dim=1).float().mean().item()
    # Each of 2 ops applies with p 0.5 (a few ops can be no-ops on some images): ~1/4 untouched
    assert 0.17 < untouched < 0.33, untouched
    with pytest.raises(ValueError, match="probe.randaugment='rand-q3'"):
        pa.rand_augment(x, gen(), "rand-q3", (0.5,) * 3)


def test_random_erasing_boxes_follow_timm_geometry():
    n, h, w = 4000, 32, 32
    x = torch.full((n, 3, h, w), 7.0)  # no N(0, 1) draw equals 7
    out = pa.random_erasing(x, torch.Generator().manual_seed(0), 0.25)
    erased = out != 7.0
    per_image = erased.any(dim=1)  # (N, H, W)
    hit = per_image.flatten(1).any(dim=1)
    assert abs(hit.float().mean().item() - 0.25) < 0.03
    assert torch.equal(erased[:, 0], erased[:, 1])  # one box for all channels
    rows, cols = per_image.any(dim=2), per_image.any(dim=1)
    for i in hit.nonzero().squeeze(1)[:300].tolist():
        bh, bw = int(rows[i].sum()), int(cols[i].sum())
        assert per_image[i].sum() == bh * bw  # a filled rectangle
        assert bh < h and bw < w
        area = bh * bw / (h * w)
        assert 0.02 * 0.6 < area < (1 / 3) * 1.4  # rounding of the sides
        assert 0.3 / 1.5 < bh / bw < (1 / 0.3) * 1.5
    noise = out[erased]
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05  # 'pixel' mode: N(0, 1)
    assert torch.equal(pa.random_erasing(x, torch.Generator().manual_seed(0), 0.0), x)


def test_probe_augment_per_kind():
    cfg = ProbeConfig(augment=True)
    x = torch.randn(64, 1, 32, 32)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    linear = pa.probe_augment(x, gen(), "linear", cfg, (0.3,), (0.2,), True)
    attentive = pa.probe_augment(x, gen(), "attentive", cfg, (0.3,), (0.2,), True)
    assert linear.shape == attentive.shape == x.shape
    assert torch.equal(linear, pa.probe_augment(x, gen(), "linear", cfg, (0.3,), (0.2,), True))
    assert not torch.equal(linear, attentive)  # RandAugment and erasing on top of the same crop
    plain = ProbeConfig(augment=True, randaugment="", random_erasing=0.0)
    assert torch.equal(pa.probe_augment(x, gen(), "attentive", plain, (0.3,), (0.2,), True), linear)
    assert math.isclose(cfg.crop_scale[0], 0.08)
