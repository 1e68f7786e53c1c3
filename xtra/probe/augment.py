"""The official probes' training augmentation, batched in torch (torchvision/timm do not import on
this CPU torch build): RandomResizedCrop + flip for both probes, then for the attentive probe timm's
RandAugment ``rand-m9-mstd0.5-inc1`` and RandomErasing (p 0.25, 'pixel' mode).

RandAugment follows timm's definitions (`timm/data/auto_augment.py`, the "increasing" op set): per
image, `n` ops drawn with replacement from the 15 below, each applied with probability 0.5 at a
magnitude drawn from Normal(m, mstd) clipped to [0, 10]. The ops act like Pillow's on 8-bit images:
pixels are quantized to 0..255 and every op's result is rounded back to that grid (tested against
Pillow itself). Geometric ops sample bilinearly at pixel centres, clamp neighbours to the edge and
fill points outside the image with the dataset's mean colour, as Pillow's affine transform does.
All randomness comes from one `torch.Generator`: the same state gives the same batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from xtra.config import DataConfig, ProbeConfig, parse_randaugment
from xtra.data import augment
from xtra.data.lazy import Crop
from xtra.probe.schedule import probe_seed

OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
       "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
       "TranslateXRel", "TranslateYRel")  # timm's _RAND_INCREASING_TRANSFORMS, in its order
OP_PROB = 0.5  # timm applies each drawn op with this probability
MAX_LEVEL = 10.0

# ---------------------------------------------------------------------------------------------
# Pillow's 8-bit ops on (B, C, H, W) float tensors holding integers 0..255


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


def blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's Image.blend(degenerate, x, factor) for uint8: truncated toward zero, clipped."""
    return torch.trunc(degenerate + _per_image(factor, x) * (x - degenerate)).clamp(0, 255)


def luma(x: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L: (R*19595 + G*38470 + B*7471 + 32768) >> 16; a 1-channel image is its own."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536)


def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast: each channel stretched so its min -> 0 and max -> 255 (truncated)."""
    xd = x.double()  # Pillow's table: int(i * scale + offset) in double precision, bit for bit
    lo = xd.amin(dim=(2, 3), keepdim=True)
    hi = xd.amax(dim=(2, 3), keepdim=True)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)  # a true division (a scalar / tensor is not)
    out = torch.floor(xd * scale + (-lo * scale)).clamp(0, 255)
    return torch.where(hi > lo, out, xd).to(x.dtype)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize per channel: lut[i] = (step // 2 + #pixels below i) // step with
    step = (#pixels - count of the highest value present) // 255; identity when step is 0."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    top = 255 - torch.flip(hist > 0, dims=[1]).long().argmax(dim=1)  # highest value present
    step = (h * w - hist.gather(1, top[:, None]).squeeze(1)) // 255  # (B*C,)
    below = torch.cumsum(hist, dim=1) - hist  # pixels strictly below each value
    lut = ((step[:, None] // 2 + below) // step.clamp(min=1)[:, None]).clamp(max=255)
    out = lut.gather(1, flat).to(x.dtype)
    out = torch.where((step > 0)[:, None], out, flat.to(x.dtype))
    return out.view(b, c, h, w)


def invert(x: torch.Tensor) -> torch.Tensor:
    return 255 - x


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """ImageOps.posterize: keep the top `bits` bits of every value (0 bits: black)."""
    unit = _per_image(2.0 ** (8 - bits.clamp(0, 8)), x)
    return torch.floor(x / unit) * unit


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """ImageOps.solarize: values >= threshold are inverted."""
    return torch.where(x >= _per_image(threshold, x), 255 - x, x)


def solarize_add(x: torch.Tensor, add: torch.Tensor, threshold: float = 128) -> torch.Tensor:
    """timm's solarize_add: values below the threshold get `add` (clipped to 255)."""
    return torch.where(x < threshold, (x + _per_image(add, x)).clamp(max=255), x)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Color: blend with the gray image (a gray image is unchanged)."""
    return blend(luma(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with the gray image's mean, rounded to an integer."""
    mean = torch.floor(luma(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
    return blend(mean.expand_as(x), x, factor)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return blend(torch.zeros_like(x), x, factor)


SMOOTH = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13  # ImageFilter.SMOOTH


def smooth(x: torch.Tensor) -> torch.Tensor:
    """ImageFilter.SMOOTH (3x3, rounded); Pillow leaves the one-pixel border as it was."""
    c = x.shape[1]
    kernel = SMOOTH.to(x).view(1, 1, 3, 3).expand(c, 1, 3, 3)
    inner = torch.floor(F.conv2d(x, kernel, groups=c) + 0.5).clamp(0, 255)
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = inner
    return out


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with the smoothed image."""
    return blend(smooth(x), x, factor)


def affine(x: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Pillow's Image.transform(AFFINE, (a, b, c, d, e, f), BILINEAR, fillcolor): the output pixel
    centred at (x, y) samples the input at (a x + b y + c, d x + e y + f) in pixel units; points
    outside the image get `fill` (C,), neighbours are clamped to the edge. `matrix`: (B, 6)."""
    b, c, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device) + 0.5,
                            torch.arange(w, dtype=x.dtype, device=x.device) + 0.5, indexing="ij")  # (H, W)
    m = matrix.to(x.dtype).view(b, 6, 1, 1)
    u = m[:, 0] * xs + m[:, 1] * ys + m[:, 2]  # (B, H, W) input x in pixel units
    v = m[:, 3] * xs + m[:, 4] * ys + m[:, 5]
    grid = torch.stack([u / w * 2 - 1, v / h * 2 - 1], dim=-1)  # (B, H, W, 2), align_corners=False units
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = ((u >= 0) & (u < w) & (v >= 0) & (v < h)).unsqueeze(1)  # (B, 1, H, W)
    out = torch.where(inside, torch.floor(out + 1e-3), fill.to(x).view(1, c, 1, 1))  # truncated, as Pillow
    return out.clamp(0, 255)


def rotate(x: torch.Tensor, degrees: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Image.rotate(degrees): counter-clockwise about the image centre, same size."""
    h, w = x.shape[2:]
    t = torch.deg2rad(degrees.to(torch.float64))
    cos, sin = torch.cos(t), torch.sin(t)
    cx, cy = w / 2, h / 2
    # input = R (output - centre) + centre, R = [[cos, -sin], [sin, cos]] (Pillow's matrix for -angle)
    matrix = torch.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy], dim=1)
    return affine(x, matrix, fill)


def shear_x(x: torch.Tensor, factor: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    zero, one = torch.zeros_like(factor), torch.ones_like(factor)
    return affine(x, torch.stack([one, factor, zero, zero, one, zero], dim=1), fill)


def shear_y(x: torch.Tensor, factor: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    zero, one = torch.zeros_like(factor), torch.ones_like(factor)
    return affine(x, torch.stack([one, zero, zero, factor, one, zero], dim=1), fill)


def translate(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Image.transform(AFFINE, (1, 0, dx, 0, 1, dy)): the content moves by (-dx, -dy) pixels."""
    zero, one = torch.zeros_like(dx), torch.ones_like(dx)
    return affine(x, torch.stack([one, zero, dx, zero, one, dy], dim=1), fill)


# ---------------------------------------------------------------------------------------------
# RandAugment: magnitudes -> op arguments as timm's *_increasing level functions define them


def _signed(v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """timm's _randomly_negate: each value negated with probability 0.5."""
    flip = torch.rand(v.shape, generator=gen, device=v.device) < 0.5
    return torch.where(flip, -v, v)


def apply_op(name: str, x: torch.Tensor, level: torch.Tensor, gen: torch.Generator,
             fill: torch.Tensor) -> torch.Tensor:
    """One RandAugment op at magnitude `level` (B,) in [0, 10] on 0..255 images (B, C, H, W)."""
    frac = level / MAX_LEVEL
    if name == "AutoContrast":
        return auto_contrast(x)
    if name == "Equalize":
        return equalize(x)
    if name == "Invert":
        return invert(x)
    if name == "Rotate":
        return rotate(x, _signed(frac * 30.0, gen), fill)
    if name == "PosterizeIncreasing":
        return posterize(x, 4 - torch.floor(frac * 4))
    if name == "SolarizeIncreasing":
        return solarize(x, 256 - torch.floor(frac * 256))
    if name == "SolarizeAdd":
        return solarize_add(x, torch.floor(frac * 110))
    enhance = {"ColorIncreasing": color, "ContrastIncreasing": contrast, "BrightnessIncreasing": brightness,
               "SharpnessIncreasing": sharpness}
    if name in enhance:
        return enhance[name](x, 1.0 + _signed(frac * 0.9, gen))
    if name == "ShearX":
        return shear_x(x, _signed(frac * 0.3, gen), fill)
    if name == "ShearY":
        return shear_y(x, _signed(frac * 0.3, gen), fill)
    if name == "TranslateXRel":
        return translate(x, _signed(frac * 0.45, gen) * x.shape[3], torch.zeros_like(frac), fill)
    if name == "TranslateYRel":
        return translate(x, torch.zeros_like(frac), _signed(frac * 0.45, gen) * x.shape[2], fill)
    raise ValueError(f"RandAugment op {name!r} is not known (allowed: {', '.join(OPS)})")


def rand_augment(pixels: torch.Tensor, gen: torch.Generator, spec: str, fill: tuple[float, ...]) -> torch.Tensor:
    """timm's RandAugment(`spec`) on a batch of [0, 1] images (B, C, H, W); `fill` is the mean colour
    in [0, 1] (timm's img_mean). Returns [0, 1] images on the 8-bit grid."""
    params = parse_randaugment(spec)
    b = pixels.shape[0]
    x = torch.floor(pixels.clamp(0, 1) * 255 + 0.5)  # Pillow's ToPILImage-style quantization
    fill_t = torch.tensor([min(255.0, round(255 * v)) for v in fill], device=x.device)
    dev = x.device
    for _ in range(params["n"]):
        op = torch.randint(len(OPS), (b,), generator=gen, device=dev)  # drawn with replacement
        applied = torch.rand(b, generator=gen, device=dev) < OP_PROB
        level = params["m"] + params["mstd"] * torch.randn(b, generator=gen, device=dev)
        level = level.clamp(0.0, MAX_LEVEL)
        for i, name in enumerate(OPS):
            sel = (applied & (op == i)).nonzero().squeeze(1)
            if len(sel):
                x[sel] = apply_op(name, x[sel], level[sel], gen, fill_t)
    return x / 255


def random_erasing(x: torch.Tensor, gen: torch.Generator, probability: float, min_area: float = 0.02,
                   max_area: float = 1 / 3, min_aspect: float = 0.3, attempts: int = 10) -> torch.Tensor:
    """timm's RandomErasing(probability, mode='pixel') on normalized images (B, C, H, W): with
    `probability`, one box of area fraction U(min_area, max_area) and log-uniform aspect in
    [min_aspect, 1/min_aspect] (the first of `attempts` draws that fits strictly inside) is filled
    with N(0, 1) noise per pixel and channel."""
    b, c, h, w = x.shape
    dev = x.device
    erase = torch.rand(b, generator=gen, device=dev) < probability
    area = (min_area + (max_area - min_area) * torch.rand(b, attempts, generator=gen, device=dev)) * (h * w)
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, attempts, generator=gen, device=dev))
    eh = torch.round(torch.sqrt(area * aspect))  # (B, attempts)
    ew = torch.round(torch.sqrt(area / aspect))
    fits = (ew < w) & (eh < h)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first attempt that fits
    erase &= fits.any(dim=1)
    eh, ew = eh.gather(1, first).squeeze(1), ew.gather(1, first).squeeze(1)
    top = torch.floor(torch.rand(b, generator=gen, device=dev) * (h - eh + 1))
    left = torch.floor(torch.rand(b, generator=gen, device=dev) * (w - ew + 1))
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    box = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
           & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1)) & erase.view(b, 1, 1))
    noise = torch.randn(x.shape, generator=gen, device=dev, dtype=x.dtype)
    return torch.where(box.unsqueeze(1), noise, x)


# ---------------------------------------------------------------------------------------------
# The probes' training augmentation


def probe_augment(images: torch.Tensor, gen: torch.Generator, kind: str, cfg: ProbeConfig,
                  mean: tuple[float, ...], std: tuple[float, ...], hflip: bool) -> torch.Tensor:
    """Normalized images in, normalized images out. Both kinds: RandomResizedCrop(cfg.crop_scale,
    cfg.crop_ratio) and a flip where the dataset allows one; attentive: then RandAugment on the
    pixels (cfg.randaugment) and RandomErasing (cfg.random_erasing) on the normalized result, the
    order of timm's create_transform."""
    crop = DataConfig(crop_scale=cfg.crop_scale, crop_ratio=cfg.crop_ratio)
    return after_crop(augment(images, gen, crop, hflip), gen, kind, cfg, mean, std)


def after_crop(x: torch.Tensor, gen: torch.Generator, kind: str, cfg: ProbeConfig, mean: tuple[float, ...],
               std: tuple[float, ...]) -> torch.Tensor:
    """What follows the crop and flip in `probe_augment` (nothing for linear; RandAugment on the
    pixels, then RandomErasing, for attentive), on normalized crops cut in memory or from files."""
    if kind != "attentive":
        return x
    if cfg.randaugment:
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (rand_augment(x * s + m, gen, cfg.randaugment, mean) - m) / s
    if cfg.random_erasing > 0:
        x = random_erasing(x, gen, cfg.random_erasing)
    return x


def augmenter(cfg: ProbeConfig, dataset, seed: int, kind: str, device: torch.device) -> Callable:
    """The official training augmentation of `kind` for normalized image batches (see
    `probe_augment`), seeded by (seed, kind, micro-batch)."""
    def run(images: torch.Tensor, step: int) -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(probe_seed(seed, kind, "augment", step))
        return probe_augment(images, gen, kind, cfg, dataset.mean, dataset.std, dataset.hflip)

    if getattr(dataset.train.images, "lazy", False):
        crop_seed = probe_seed(seed, kind, "crop")

        def from_files(images, idx: torch.Tensor, step: int) -> torch.Tensor:
            """A streamed collection's batch: RandomResizedCrop (bicubic) + flip cut from the decoded
            full-resolution files in the loader workers (sample j of micro-batch `step` seeded by
            (seed, kind, step, j)), then the rest of `probe_augment` on the device."""
            x = images.cropped(idx, Crop(crop_seed, step, cfg.crop_scale, cfg.crop_ratio, dataset.hflip)).to(device)
            gen = torch.Generator(device=device).manual_seed(probe_seed(seed, kind, "augment", step))
            return after_crop(x, gen, kind, cfg, dataset.mean, dataset.std)

        run.from_files = from_files  # type: ignore[attr-defined]
    return run
