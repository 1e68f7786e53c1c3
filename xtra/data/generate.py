"""Generate an ImageFolder of real image files, for tests, benchmarks and trying the pipeline out.

Class c is a striped pattern at angle c * 180 / n_classes under a class tint, at a random size and
aspect ratio around ImageNet's (about 500x375 on average by default), with a random phase and
frequency, so a probe can learn the classes from crops. Options add PNG, grayscale and CMYK files,
a truncated JPEG and a non-image file, the cases a loader of real collections meets. Seeded: the
same arguments write the same bytes. Pillow is imported inside.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _pattern(rng: np.random.Generator, label: int, n_classes: int, w: int, h: int) -> np.ndarray:
    """(h, w, 3) uint8: stripes at the class angle, a class tint, random phase/frequency/offset."""
    theta = label * math.pi / n_classes + rng.uniform(-0.08, 0.08)
    freq = rng.uniform(3, 8) / max(w, h)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wave = np.sin(2 * math.pi * freq * (xx * math.cos(theta) + yy * math.sin(theta)) + rng.uniform(0, 2 * math.pi))
    hue = 2 * math.pi * label / n_classes
    tint = 0.5 + 0.4 * np.array([math.cos(hue), math.cos(hue + 2.1), math.cos(hue + 4.2)], dtype=np.float32)
    base = 0.45 + 0.35 * wave[..., None] * tint + rng.uniform(-0.1, 0.1, size=3).astype(np.float32)
    return (np.clip(base, 0, 1) * 255).astype(np.uint8)


def write_image(path: Path, rng: np.random.Generator, label: int, n_classes: int, size: tuple[int, int],
                kind: str = "jpeg", quality: int = 85) -> None:
    """One image file; ``kind``: jpeg | png | gray (a 1-channel JPEG) | cmyk (a CMYK JPEG)."""
    from PIL import Image

    w, h = size
    small = (max(8, w // 4), max(8, h // 4))  # drawn at a quarter of the size, then upsampled: 10x cheaper
    im = Image.fromarray(_pattern(rng, label, n_classes, *small)).resize(size, Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png":
        im.save(path, format="PNG", compress_level=1)
    elif kind == "gray":
        im.convert("L").save(path, format="JPEG", quality=quality)
    elif kind == "cmyk":
        im.convert("CMYK").save(path, format="JPEG", quality=quality)
    else:
        im.save(path, format="JPEG", quality=quality)


def _size(rng: np.random.Generator, mean_side: int) -> tuple[int, int]:
    area = mean_side**2 * 0.75 * rng.uniform(0.5, 1.5)  # like 500x375 on average for mean_side=500
    ratio = math.exp(rng.uniform(math.log(0.6), math.log(1.8)))
    return max(8, int(math.sqrt(area * ratio))), max(8, int(math.sqrt(area / ratio)))


def make_imagefolder(root: Path, n_classes: int = 4, train_per_class: int = 10, val_per_class: int = 3, *,
                     mean_side: int = 500, seed: int = 0, mixed: bool = False, truncated: int = 0,
                     extra_files: bool = False, progress=None) -> Path:
    """Write ``root/train/<class>/`` and (if val_per_class) ``root/val/<class>/``. ``mixed``: every
    5th file a PNG, every 7th grayscale, every 11th CMYK (else JPEG). ``truncated``: that many train
    JPEGs cut in half (unreadable). ``extra_files``: a README.txt in each class folder (not an image).
    Existing files are kept (a second call resumes). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = [f"class_{c:03d}" for c in range(n_classes)]
    done = 0
    total = n_classes * (train_per_class + val_per_class)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            for i in range(per_class):
                sub = np.random.default_rng([seed, c, i, split == "val"])
                kind = "jpeg"
                if mixed:
                    kind = "png" if i % 5 == 4 else "gray" if i % 7 == 6 else "cmyk" if i % 11 == 10 else "jpeg"
                path = root / split / name / f"{name}_{i:06d}.{'png' if kind == 'png' else 'jpg'}"
                if not path.exists():
                    write_image(path, sub, c, n_classes, _size(sub, mean_side), kind)
                done += 1
                if progress is not None and done % 500 == 0:
                    progress(done, total)
            if extra_files:
                (root / split / name / "README.txt").write_text("not an image\n")
    jpegs = sorted((root / "train").glob("*/*.jpg"))
    for path in [jpegs[int(j)] for j in rng.choice(len(jpegs), size=truncated, replace=False)] if truncated else []:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return root
