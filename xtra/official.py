"""Import the authors' released XTRA checkpoints (github.com/elad-amrani/xtra) as xtra checkpoints.

Two layouts: a Lightning checkpoint (``state_dict``: the released ViT-B/16, ``epoch=799-step=490400``)
and a DeepSpeed model-states file (``module``: the released ViT-H/14, ``mp_rank_00_model_states``).
Both hold the official LightningModule's parameters under ``enc.`` (the ViT encoder), ``proj.`` (the
projection MLP), ``predictor.`` (the predictor ViT) and ``aim_proj.<i>.`` (one pixel head per
predicted block ahead), and the flattened run config under ``hyper_parameters`` (``enc_arch``,
``enc_block_size``, ``predictor_num_heads``, ...).

The sizes are read off the tensor shapes; the head counts (which no shape shows) and the loss come
from the hyper-parameters (or the caller). Every tensor is placed on `xtra.model.XTRA` or the import
is refused in one line naming it; so is a shape that does not fit. Two layouts differ from xtra's and
are permuted, which keeps the function exactly: the official pixel heads read a block's k² predictor
outputs channel-major (``(D, k, k)`` flattened) and write a crop channel-first (``(C, kp, kp)``);
xtra concatenates token-major and writes pixels channel-last. The official projection's last layer
has no bias (``out_bias: False``); it is imported as a zero bias.

Loading goes through ``torch.load(weights_only=True)``. A few non-tensor objects that DeepSpeed
pickles beside the weights (its fp16 loss scaler) are read as inert `Opaque` records under their
own names; any other foreign object is refused, naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from xtra.checkpoint import CHECKPOINT, FORMAT, CheckpointError
from xtra.config import RESOURCE_KEYS, DataConfig, ModelConfig, PretrainConfig
from xtra.fileio import atomic_write_bytes, atomic_write_json
from xtra.model import XTRA

OFFICIAL_REPO = "github.com/elad-amrani/xtra"
PROVENANCE_JSON = "official.json"

# Heads per encoder size in the official `vit.py` factories (no tensor shape shows the head count).
ARCH_HEADS = {"vit_tiny": 3, "vit_small": 6, "vit_base": 12, "vit_large": 16, "vit_huge": 16, "vit_giant": 16}
# Objects DeepSpeed pickles beside the weights; read as inert records, never imported or run.
INERT_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                 "deepspeed.runtime.fp16.loss_scaler.LossScaler")
WRAPPER_PREFIXES = ("_forward_module.", "module.")  # Lightning's DeepSpeed wrapper, DDP
PARTS = ("enc.", "proj.", "predictor.", "aim_proj.")


class OfficialCheckpointError(CheckpointError):
    """An official checkpoint that cannot be read or placed on xtra's model (one line, naming it)."""


class Opaque:
    """A pickled non-tensor object (e.g. DeepSpeed's loss scaler) kept as its plain state; no code runs."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


@dataclasses.dataclass(frozen=True)
class Official:
    """What an official checkpoint holds: its weights (wrapper prefixes removed), run config, layout."""

    path: Path
    layout: str  # lightning | deepspeed
    weights: dict[str, torch.Tensor]
    hparams: dict[str, Any]
    epoch: int | None
    global_step: int | None


def read_official(path: Path | str) -> Official:
    """Load an official checkpoint (weights_only); OfficialCheckpointError, one line, if unusable."""
    path = Path(path)
    if not path.is_file():
        raise OfficialCheckpointError(f"{path}: no such file (expected an official XTRA checkpoint)")
    try:
        with torch.serialization.safe_globals([(Opaque, name) for name in INERT_GLOBALS]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged or foreign file
        text = str(err)
        foreign = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if foreign:
            raise OfficialCheckpointError(f"{path}: holds a pickled {foreign.group(1)}, which a weights-only "
                                          f"load refuses to run (not an official XTRA checkpoint)") from None
        first = text.splitlines()[0][:160] if text else ""
        raise OfficialCheckpointError(f"{path}: corrupt or truncated checkpoint "
                                      f"({type(err).__name__}: {first})") from None
    if not isinstance(obj, dict):
        raise OfficialCheckpointError(f"{path}: not an official XTRA checkpoint (a {type(obj).__name__}, not a dict)")
    if isinstance(obj.get("state_dict"), dict):
        layout, weights = "lightning", obj["state_dict"]
    elif isinstance(obj.get("module"), dict):
        layout, weights = "deepspeed", obj["module"]
    else:
        raise OfficialCheckpointError(f"{path}: not an official XTRA checkpoint (no 'state_dict' (Lightning) or "
                                      f"'module' (DeepSpeed) entry; keys: {', '.join(map(str, list(obj)[:8]))})")
    for prefix in WRAPPER_PREFIXES:
        if weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise OfficialCheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
    hparams = obj.get("hyper_parameters") or {}
    return Official(path=path, layout=layout, weights=dict(weights), hparams=dict(hparams),
                    epoch=obj.get("epoch"), global_step=obj.get("global_step", obj.get("global_steps")))


# ---------------------------------------------------------------------------------------------
# The model config, from the tensor shapes and the hyper-parameters


def _need(off: Official, key: str) -> torch.Tensor:
    if key not in off.weights:
        found = sorted({k.split(".")[0] + "." for k in off.weights})
        raise OfficialCheckpointError(
            f"{off.path}: no tensor {key!r}: not an official XTRA checkpoint (expected the parts "
            f"{', '.join(PARTS)}; found {', '.join(found[:6]) or 'nothing'})")
    return off.weights[key]


def _count(off: Official, prefix: str) -> int:
    return len({int(m.group(1)) for k in off.weights if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})


def _hp(off: Official, key: str, default: Any = None) -> Any:
    value = off.hparams.get(key, default)
    return default if value is None else value


def infer_config(off: Official, num_heads: int | None = None, pred_num_heads: int | None = None) -> ModelConfig:
    """xtra's ModelConfig for the official weights. Shapes give the sizes; the hyper-parameters (or
    `num_heads` / `pred_num_heads`) give the head counts, the loss and the block order."""
    for key in off.weights:
        if not key.startswith(PARTS):
            raise OfficialCheckpointError(f"{off.path}: cannot place tensor {key!r} on xtra's XTRA model "
                                          f"(allowed parts: {', '.join(PARTS)})")
    pos = _need(off, "enc.pos_embed")  # (1, T, D)
    conv = _need(off, "enc.patch_embed.proj.weight")  # (D, C, p, p)
    width, n_tokens, channels, patch = pos.shape[-1], pos.shape[1], conv.shape[1], conv.shape[-1]
    grid = math.isqrt(n_tokens)
    if grid * grid != n_tokens:
        raise OfficialCheckpointError(f"{off.path}: enc.pos_embed has {n_tokens} positions, not a square grid")
    for part, layers in (("proj.mlp", 2), ("aim_proj.0.mlp", 2)):
        extra = sorted(k for k in off.weights if k.startswith(part + ".") and k.split(".")[-2] not in ("0", "2"))
        if extra:
            raise OfficialCheckpointError(f"{off.path}: cannot place tensor {extra[0]!r}: xtra's "
                                          f"{part.split('.')[0]} is a {layers}-layer MLP without BatchNorm "
                                          f"(official nlayers=2, in_bn=False)")
    pred_width = _need(off, "proj.mlp.2.weight").shape[0]
    head_out = _need(off, "aim_proj.0.mlp.2.weight").shape[0]
    crop = math.isqrt(head_out // channels)
    if crop * crop * channels != head_out or crop % patch:
        raise OfficialCheckpointError(f"{off.path}: aim_proj.0.mlp.2.weight predicts {head_out} values, not a "
                                      f"{channels}-channel crop of k x k patches of {patch} px")
    block_size = crop // patch
    mask = _mask(off, "enc")
    if mask == "causal" and block_size != 1:
        raise OfficialCheckpointError(f"{off.path}: a causal encoder (enc_is_causal=True) but the pixel head "
                                      f"predicts {crop}x{crop} px crops, not one {patch} px patch")
    stated = _hp(off, "enc_block_size")
    if stated is not None and mask == "block-causal" and int(stated) != block_size:
        raise OfficialCheckpointError(f"{off.path}: hyper-parameter enc_block_size={stated} but the pixel head "
                                      f"predicts {crop}x{crop} px crops (block size {block_size})")
    # The predictor's mask must be the encoder's (its block size is read only under is_block_causal).
    pred_k = _hp(off, "predictor_block_size", block_size) if _mask(off, "predictor") == "block-causal" else 1
    if _mask(off, "predictor") != mask or int(pred_k) != block_size:
        raise OfficialCheckpointError(f"{off.path}: hyper-parameters predictor_is_block_causal="
                                      f"{_hp(off, 'predictor_is_block_causal')!r}, predictor_block_size={pred_k}: "
                                      f"xtra's predictor uses the encoder's mask (block size {block_size})")
    if not _hp(off, "aim_norm_pix_loss", True):
        raise OfficialCheckpointError(f"{off.path}: hyper-parameter aim_norm_pix_loss=False: xtra regresses "
                                      "normalized pixels only")
    heads = num_heads or _hp(off, "enc_num_heads") or ARCH_HEADS.get(_hp(off, "enc_arch", ""))
    pred_heads = pred_num_heads or _hp(off, "predictor_num_heads")
    if not heads or not pred_heads:
        missing = "num_heads (enc_arch / enc_num_heads)" if not heads else "pred_num_heads (predictor_num_heads)"
        raise OfficialCheckpointError(f"{off.path}: the checkpoint does not say the {missing}; give it "
                                      f"(--num-heads / --pred-num-heads)")
    mlp_ratio = _need(off, "enc.blocks.0.mlp.fc1.weight").shape[0] / width
    pred_ratio = _need(off, "predictor.blocks.0.mlp.fc1.weight").shape[0] / pred_width
    if pred_ratio != mlp_ratio:
        raise OfficialCheckpointError(f"{off.path}: predictor.blocks.0.mlp.fc1.weight has MLP ratio {pred_ratio}, "
                                      f"the encoder {mlp_ratio}: xtra shares one ratio")
    try:
        return ModelConfig(
            img_size=grid * patch, patch_size=patch, channels=channels, width=width,
            depth=_count(off, "enc.blocks."), num_heads=int(heads), mlp_ratio=mlp_ratio,
            drop_path=float(_hp(off, "enc_drop_path_rate", 0.0)),
            proj_hidden=_need(off, "proj.mlp.0.weight").shape[0], pred_width=pred_width,
            pred_depth=_count(off, "predictor.blocks."), pred_num_heads=int(pred_heads),
            head_hidden=_need(off, "aim_proj.0.mlp.0.weight").shape[0], block_size=block_size,
            next_heads=_count(off, "aim_proj."), loss="l1" if _hp(off, "aim_l1_loss", False) else "l2",
            **_order(off, (grid // block_size) ** 2))
    except ValueError as err:
        raise OfficialCheckpointError(f"{off.path}: the official weights make no valid xtra model ({err})") from None


def _mask(off: Official, part: str) -> str:
    """The official attention mask of `part` (enc | predictor): block-causal, or causal (one patch per
    step, which is xtra's block size 1, e.g. the block ablation's 1x16x16 and 2x16x16); anything else is
    refused (full attention has no next block to predict)."""
    block, causal = bool(_hp(off, f"{part}_is_block_causal", True)), bool(_hp(off, f"{part}_is_causal", False))
    if block != causal:
        return "block-causal" if block else "causal"
    raise OfficialCheckpointError(f"{off.path}: hyper-parameters {part}_is_block_causal={block}, {part}_is_causal="
                                  f"{causal}: xtra models block-causal (or causal) attention only")


def _order(off: Official, n_blocks: int) -> dict[str, Any]:
    """The block order: `aim_pseudo_random` is the official pseudo-random order, one order per block
    (`create_random_permutations`), seeded by the run's seed; xtra draws the same orders."""
    seed = int(_hp(off, "seed", 0))
    if not _hp(off, "aim_pseudo_random", False):
        return {"order": "raster", "order_seed": seed}
    return {"order": "pseudo-random", "n_orders": n_blocks, "order_seed": seed}


# ---------------------------------------------------------------------------------------------
# Tensor mapping


def _major_swap(outer: int, inner: int) -> torch.Tensor:
    """Index map from xtra's (inner, outer)-flattened layout to the official (outer, inner) one:
    entry i*outer + o holds o*inner + i."""
    return torch.arange(outer * inner).view(outer, inner).t().reshape(-1)


def tensor_map(cfg: ModelConfig) -> dict[str, tuple[str, torch.Tensor | None, int]]:
    """{xtra key: (official key, index permutation or None, dim it permutes)}."""
    out: dict[str, tuple[str, torch.Tensor | None, int]] = {}
    block = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")

    def same(dst: str, src: str) -> None:
        for name in ("weight", "bias"):
            out[f"{dst}.{name}"] = (f"{src}.{name}", None, 0)

    same("encoder.patch_embed.proj", "enc.patch_embed.proj")
    out["encoder.pos"] = ("enc.pos_embed", None, 0)
    for i in range(cfg.depth):
        for part in block:
            same(f"encoder.blocks.{i}.{part}", f"enc.blocks.{i}.{part}")
    same("encoder.norm", "enc.norm")
    same("predictor.project.fc1", "proj.mlp.0")
    same("predictor.project.fc2", "proj.mlp.2")
    out["predictor.pos"] = ("predictor.pos_embed", None, 0)
    for i in range(cfg.pred_depth):
        for part in block:
            same(f"predictor.blocks.{i}.{part}", f"predictor.blocks.{i}.{part}")
    same("predictor.norm", "predictor.norm")
    k2, s2 = cfg.block_size**2, (cfg.block_size * cfg.patch_size) ** 2
    into = _major_swap(cfg.pred_width, k2)  # block input: official (D, k, k) -> xtra (k*k tokens, D)
    outof = _major_swap(cfg.channels, s2)  # crop output: official (C, kp, kp) -> xtra (kp, kp, C)
    for j in range(cfg.next_heads):
        out[f"heads.{j}.mlp.fc1.weight"] = (f"aim_proj.{j}.mlp.0.weight", into, 1)
        out[f"heads.{j}.mlp.fc1.bias"] = (f"aim_proj.{j}.mlp.0.bias", None, 0)
        out[f"heads.{j}.mlp.fc2.weight"] = (f"aim_proj.{j}.mlp.2.weight", outof, 0)
        out[f"heads.{j}.mlp.fc2.bias"] = (f"aim_proj.{j}.mlp.2.bias", outof, 0)
    return out


OPTIONAL_BIASES = re.compile(r"^(proj\.mlp\.2|aim_proj\.\d+\.mlp\.2)\.bias$")  # official out_bias=False


def to_xtra_state(off: Official, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The official weights as `XTRA(cfg).state_dict()` (float32); refuses, naming the tensor, any
    official tensor left unplaced, any missing one, any shape that does not fit."""
    want = {k: v.shape for k, v in XTRA(cfg).state_dict().items()}
    mapping = tensor_map(cfg)
    assert set(mapping) == set(want), sorted(set(mapping) ^ set(want))
    state, used = {}, set()
    for dst, (src, perm, dim) in mapping.items():
        if src not in off.weights:
            if OPTIONAL_BIASES.match(src):
                state[dst] = torch.zeros(want[dst])
                continue
            raise OfficialCheckpointError(f"{off.path}: no tensor {src!r} (xtra's {dst} needs it; the checkpoint "
                                          f"is truncated or of another architecture)")
        value = off.weights[src]
        if tuple(value.shape) != tuple(want[dst]):
            raise OfficialCheckpointError(f"{off.path}: size mismatch: {src!r} has shape {tuple(value.shape)} but "
                                          f"xtra's {dst} needs {tuple(want[dst])}")
        value = value.detach().float()
        state[dst] = (value.index_select(dim, perm) if perm is not None else value).contiguous()
        used.add(src)
    left = sorted(set(off.weights) - used)
    if left:
        raise OfficialCheckpointError(f"{off.path}: cannot place tensor {left[0]!r} on xtra's XTRA model "
                                      f"({len(left)} left over)")
    return state


# ---------------------------------------------------------------------------------------------
# Data recorded with the import, and the xtra checkpoint written


def official_data(off: Official) -> DataConfig | None:
    """The pretraining data the official run used, in xtra's names (None when it does not say):
    ImageNet as an image folder at the run's own path, named by a fingerprint (the path is a resource)."""
    if _hp(off, "dataset_imagenet1k_use", False):  # xtra's image folder is ROOT/train + ROOT/val
        root = str(_hp(off, "dataset_imagenet1k_train_root", "./data/imagenet/train/")).rstrip("/")
        root = root[: -len("/train")] if root.endswith("/train") else root
        return DataConfig(name=f"imagefolder:{root}", fingerprint="imagenet-1k")
    if _hp(off, "dataset_imagenet21k_use", False):
        return DataConfig(name=f"imagefolder:{_hp(off, 'dataset_imagenet21k_root', './data/imagenet21k/')}",
                          fingerprint="imagenet-21k")
    for name in ("cifar10", "cifar100"):
        if _hp(off, f"dataset_{name}_use", False):
            return DataConfig(name=name)
    return None


def continue_sets(cfg: ModelConfig) -> list[str]:
    """`--set` items that make `xtra pretrain` build this model (to continue from `pretrain.init`)."""
    def literal(v: Any) -> str:
        return json.dumps(v) if isinstance(v, (str, bool)) else repr(v)

    return [f"model.{k}={literal(v)}" for k, v in dataclasses.asdict(cfg).items()
            if f"model.{k}" not in RESOURCE_KEYS]


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes and float32 bytes of a state dict (independent of file layout)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().float().contiguous().cpu()
        h.update(f"{key}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def import_official(path: Path | str, out: Path | str, *, data: DataConfig | None = None,
                    num_heads: int | None = None, pred_num_heads: int | None = None) -> dict[str, Any]:
    """Read an official checkpoint and write `out/checkpoint.pt` (a normal xtra checkpoint: no
    optimizer state, 0 samples seen by xtra) plus `out/official.json` (provenance). The checkpoint's
    bytes depend only on its contents, so importing the same file twice gives the same file.
    Returns the provenance dict. Refuses (one line) before writing anything."""
    out = Path(out)
    if (out / CHECKPOINT).exists():
        raise OfficialCheckpointError(f"{out / CHECKPOINT} already exists (allowed: a new --out directory)")
    off = read_official(path)
    cfg = infer_config(off, num_heads=num_heads, pred_num_heads=pred_num_heads)
    state = to_xtra_state(off, cfg)
    data_cfg = data or official_data(off)
    if data_cfg is None:
        raise OfficialCheckpointError(f"{off.path}: the checkpoint does not say its pretraining data; give it "
                                      f"(--data, e.g. imagefolder:/data/imagenet/train)")
    seed = int(_hp(off, "seed", 0))
    provenance = {
        "source": str(off.path), "layout": off.layout, "repository": OFFICIAL_REPO, "epoch": off.epoch,
        "global_step": off.global_step, "enc_arch": _hp(off, "enc_arch"), "weights_sha256": weights_digest(state),
        "model": dataclasses.asdict(cfg), "data": dataclasses.asdict(data_cfg), "seed": seed,
        "continue_sets": continue_sets(cfg),
        "hyper_parameters": {k: v for k, v in off.hparams.items() if isinstance(v, (str, int, float, bool, list))},
    }
    ckpt = {"format": FORMAT, "config": {"model": dataclasses.asdict(cfg), "data": dataclasses.asdict(data_cfg),
                                         "pretrain": dataclasses.asdict(PretrainConfig()), "seed": seed},
            "model": state, "step": 0, "samples_seen": 0, "final": True, "init": None,
            "official": {k: provenance[k] for k in ("source", "layout", "epoch", "global_step", "weights_sha256")}}
    buf = io.BytesIO()
    torch.save(ckpt, buf)  # in memory: the archive's inner name is fixed, so equal contents give equal bytes
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / CHECKPOINT, buf.getvalue())
    atomic_write_json(out / PROVENANCE_JSON, provenance)
    return provenance
