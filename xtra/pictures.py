"""What each block size learns: validation images with the model's next-block predictions pasted in.

For every block size k in a study (first finished trial per k), a grid of a few validation images:
the top row is the original, the bottom row keeps block 0 and replaces every later block by the
model's prediction of it from the blocks before (teacher forcing, as in training). Predictions are of
per-block normalized pixels, so each is de-normalized with its true block's mean and std (MAE's way
of showing reconstructions), then with the dataset's statistics.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from xtra import trialdir as td
from xtra.checkpoint import CHECKPOINT, load_checkpoint
from xtra.config import DataConfig, ModelConfig
from xtra.data.collection import is_command
from xtra.model import NORM_EPS, XTRA, block_crops

N_IMAGES = 6


@torch.no_grad()
def predicted_images(model: XTRA, images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) normalized images -> the same images with blocks 1.. replaced by predictions."""
    cfg = model.cfg
    crops = block_crops(images, cfg)  # (B, nb, P) raster block order
    mean = crops.mean(-1, keepdim=True)
    std = (crops.var(-1, keepdim=True, unbiased=False) + NORM_EPS).sqrt()
    pred = model.predict(images, 0)  # (B, nb-1, P): block i+1 from blocks 0..i
    pasted = torch.cat([crops[:, :1], pred * std[:, 1:] + mean[:, 1:]], dim=1)  # (B, nb, P)
    b, c = images.shape[:2]
    s, side = cfg.block_size * cfg.patch_size, cfg.grid // cfg.block_size
    x = pasted.view(b, side, side, s, s, c).permute(0, 5, 1, 3, 2, 4)  # (B, C, side, s, side, s)
    return x.reshape(b, c, side * s, side * s)


def _grid(top: torch.Tensor, bottom: torch.Tensor, pad: int = 2) -> np.ndarray:
    """Two rows of (C, H, W) images in [0, 1] -> (H', W', 3) array with white gutters."""
    n, c, h, w = top.shape
    out = np.ones((2 * h + 3 * pad, n * w + (n + 1) * pad, 3), dtype=np.float32)
    for row, imgs in enumerate((top, bottom)):
        for i, img in enumerate(imgs):
            arr = img.clamp(0, 1).permute(1, 2, 0).numpy()
            if c == 1:
                arr = np.repeat(arr, 3, axis=2)
            y, x = pad + row * (h + pad), pad + i * (w + pad)
            out[y: y + h, x: x + w] = arr
    return out


def trial_picture(run_dir: Path, n_images: int = N_IMAGES) -> tuple[int, np.ndarray]:
    from xtra.data import denormalize, load_dataset

    state = load_checkpoint(Path(run_dir) / CHECKPOINT)
    model_cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"]["model"].items()})
    data_cfg = DataConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"]["data"].items()})
    if is_command(data_cfg.name):  # a checkpoint is data, not an instruction: a report never runs a command
        raise ValueError(f"{Path(run_dir) / CHECKPOINT}: data.name {data_cfg.name[:80]!r} is a shell command; "
                         "pictures never run a data source")
    model = XTRA(model_cfg)
    model.load_state_dict(state["model"])
    model.eval()
    dataset = load_dataset(data_cfg, model_cfg.img_size, model_cfg.channels)
    images = dataset.val.images[:n_images]
    predicted = predicted_images(model, images)
    return model_cfg.block_size, _grid(denormalize(images, dataset), denormalize(predicted, dataset))


def study_pictures(study_dir: Path, fetch: Callable[[Path], bool] | None = None) -> list[tuple[int, np.ndarray]]:
    """One picture per block size: the first finished trial (by directory name) with a checkpoint.

    ``fetch(run_dir)`` brings a finished trial's missing checkpoint (a study copied from an object
    store without checkpoints: only the trials drawn are fetched) and says whether it is there now."""
    chosen: dict[int, Path] = {}
    for trial_json in sorted(Path(study_dir).glob(f"trials/*/{td.RESULT}")):
        row = json.loads(trial_json.read_text())
        k = row.get("block_size")
        if row.get("status") != "finished" or k is None or int(k) in chosen:
            continue
        if not (trial_json.parent / CHECKPOINT).exists() and not (fetch is not None and fetch(trial_json.parent)):
            continue
        chosen[int(k)] = trial_json.parent
    if not chosen:
        raise FileNotFoundError(f"{study_dir}: no finished trial with a checkpoint (trials/*/checkpoint.pt)")
    return [trial_picture(chosen[k]) for k in sorted(chosen)]
