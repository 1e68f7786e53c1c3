"""One frozen, typed config tree, validated once at the edge.

Every error names the field, the value and what is allowed. Sizes are data (``SIZES``), and the
parameter / FLOP counts are pure functions of a ``ModelConfig`` so reports and cost estimates need
no model. Dotted overrides of the tree (``override``, ``from_dict``) are ``xtra.overrides``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from xtra.limits import in_range


def _divisors(n: int) -> list[int]:
    """The divisors of n in O(sqrt(n)); n is range-checked first (LIMITS), so this stays small."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    _require(value in allowed, f"{name}={value!r} is not allowed (allowed: {', '.join(map(repr, allowed))})")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(value > 0, f"{type(obj).__name__}.{name}={value!r} must be > 0")


ATTENTION_BACKENDS = ("auto", "sdpa", "math", "flex", "xformers")
LOSSES = ("l2", "l1")
ORDERS = ("raster", "random", "pseudo-random")
PATCH_INITS = ("kaiming", "xavier")


@dataclass(frozen=True)
class ModelConfig:
    """Encoder ViT + projection MLP + predictor ViT + next-block pixel head(s)."""

    img_size: int = 32
    patch_size: int = 4
    channels: int = 1
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    proj_hidden: int = 512
    pred_width: int = 128
    pred_depth: int = 2
    pred_num_heads: int = 4
    head_hidden: int = 512
    block_size: int = 1
    next_heads: int = 1
    loss: str = "l2"
    order: str = "raster"
    n_orders: int = 16
    order_seed: int = 0
    attention: str = "auto"
    # The patch embedding's init: kaiming = the official vit.py (Kaiming-normal, fan_in, ReLU gain);
    # xavier = xtra's before it matched (LEGACY_VALUES: trials trained under it keep it).
    patch_init: str = "kaiming"
    # Recompute each block's activations in the backward pass (memory for compute: vit-h/14 needs it
    # on one GPU at useful batch sizes). The same function, so a resource, not identity.
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        in_range(self, "model")
        _positive(self, "img_size", "patch_size", "channels", "width", "depth", "num_heads",
                  "mlp_ratio", "proj_hidden", "pred_width", "pred_depth", "pred_num_heads",
                  "head_hidden", "block_size", "next_heads", "n_orders")
        _require(self.img_size % self.patch_size == 0,
                 f"model.img_size={self.img_size} is not divisible by model.patch_size={self.patch_size} "
                 f"(allowed patch sizes: {', '.join(map(str, _divisors(self.img_size)))})")
        g = self.grid
        # k = g would make a single block: nothing left to predict.
        allowed_k = ", ".join(map(str, _divisors(g)[:-1]))
        _require(g % self.block_size == 0,
                 f"model.block_size={self.block_size} does not divide the {g}x{g} patch grid (allowed: {allowed_k})")
        _require(self.block_size < g,
                 f"model.block_size={self.block_size} makes the whole {g}x{g} patch grid one block, "
                 f"leaving nothing to predict (allowed: {allowed_k})")
        _require(self.width % self.num_heads == 0,
                 f"model.width={self.width} is not divisible by model.num_heads={self.num_heads} "
                 f"(allowed heads: {', '.join(map(str, _divisors(self.width)))})")
        _require(self.pred_width % self.pred_num_heads == 0,
                 f"model.pred_width={self.pred_width} is not divisible by model.pred_num_heads="
                 f"{self.pred_num_heads} (allowed heads: {', '.join(map(str, _divisors(self.pred_width)))})")
        _require(0.0 <= self.drop_path < 1.0, f"model.drop_path={self.drop_path} must be in [0, 1)")
        _require(self.next_heads < self.n_blocks,
                 f"model.next_heads={self.next_heads} leaves nothing to predict with {self.n_blocks} blocks "
                 f"(allowed: 1..{self.n_blocks - 1})")
        _one_of("model.loss", self.loss, LOSSES)
        _one_of("model.order", self.order, ORDERS)
        _require(self.order != "pseudo-random" or self.n_orders <= self.n_blocks,
                 f"model.n_orders={self.n_orders} exceeds the {self.n_blocks} blocks: order='pseudo-random' gives "
                 f"each order its own first block (allowed: 1..{self.n_blocks})")
        _one_of("model.attention", self.attention, ATTENTION_BACKENDS)
        _one_of("model.patch_init", self.patch_init, PATCH_INITS)

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def n_tokens(self) -> int:
        return self.grid**2

    @property
    def n_blocks(self) -> int:
        return (self.grid // self.block_size) ** 2

    @property
    def block_pixels(self) -> int:
        """Values predicted per block: a (k*p) x (k*p) crop with all channels."""
        return (self.block_size * self.patch_size) ** 2 * self.channels


DATASETS = ("fashion-mnist", "mnist", "digits", "cifar10", "cifar100", "synthetic")


@dataclass(frozen=True)
class DataConfig:
    """Which images, how they are split and augmented. Resolution/channels come from the model."""

    name: str = "fashion-mnist"
    root: str = ""  # "" = look in $XTRA_DATA then /usr/share/datasets/<name>
    val_fraction: float = 0.1
    split_seed: int = 0
    augment: bool = True
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.5)
    hflip: str = "auto"  # auto = flip where the dataset allows it (not digits)
    limit_train: int = 0  # 0 = all; a cap for quick studies
    synthetic_size: int = 2048
    val_size: int = 0  # images carved from train for validation; 0 = val_fraction of them
    skip_bad: bool = False  # unreadable images: False = stop naming the file, True = skip and count them
    workers: int = -1  # loader processes for imagefolder:/wds: (-1 = auto, 0 = in the trainer); a resource
    # The collection's identity for path-based data (imagefolder:/wds:): a content fingerprint
    # filled in by `xtra.data.fingerprint` at planning time, or a name the user gives
    # (`data.fingerprint="imagenet-1k"`). The path itself is a resource, never identity.
    fingerprint: str = ""

    def __post_init__(self) -> None:
        in_range(self, "data")
        _require(self.name in DATASETS or self.name.startswith(("imagefolder:", "wds:")),
                 f"data.name={self.name!r} is not a known dataset "
                 f"(allowed: {', '.join(DATASETS)}, imagefolder:PATH, wds:PATTERN)")
        _require(0.0 < self.val_fraction < 0.5, f"data.val_fraction={self.val_fraction} must be in (0, 0.5)")
        lo, hi = self.crop_scale
        _require(0.0 < lo <= hi <= 1.0, f"data.crop_scale={self.crop_scale} must satisfy 0 < lo <= hi <= 1")
        lo, hi = self.crop_ratio
        _require(0.0 < lo <= hi, f"data.crop_ratio={self.crop_ratio} must satisfy 0 < lo <= hi")
        _one_of("data.hflip", self.hflip, ("auto", "on", "off"))
        _require(self.limit_train >= 0, f"data.limit_train={self.limit_train} must be >= 0 (0 = all)")
        _require(self.synthetic_size >= 64, f"data.synthetic_size={self.synthetic_size} must be >= 64")
        _require(self.val_size >= 0, f"data.val_size={self.val_size} must be >= 0 (0 = use data.val_fraction)")
        _require(self.workers >= -1, f"data.workers={self.workers} must be >= -1 (-1 = auto, 0 = no subprocesses)")


@dataclass(frozen=True)
class PretrainConfig:
    """AdamW, budget in samples seen (the paper's sample-efficiency unit), lr schedule `cosine`
    (warmup + cosine, the default) or `wsd` (warmup, constant, then a cooldown over the last
    `cooldown_fraction` of the budget; see `xtra.schedule`). `cooldown_fraction = 0` under wsd is a
    run without cooldown: a trunk that budgets branch off. The warmup is absolute (samples), so
    budgets that share a trunk share it."""

    samples: int = 60_000
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_samples: int = 6_000
    warmup_start_lr: float = 1e-6
    weight_decay: float = 0.05
    # AdamW decays the positional embeddings too, as the official optimizer (it exempts only biases and
    # 1-D tensors); false = xtra's rule before it matched (LEGACY_VALUES: trials trained under it keep it).
    decay_positions: bool = True
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    accumulate: int = 1
    checkpoint_every: int = 20_000  # samples; also always at the end
    log_every: int = 10  # steps
    device: str = "auto"
    compile: bool = False
    schedule: str = "cosine"  # cosine | wsd
    cooldown_fraction: float = 0.2  # wsd: the cooldown's share of the budget (0 = none: a trunk)
    cooldown_shape: str = "1-sqrt"  # wsd: linear | 1-sqrt (Hägele et al. 2024 find 1-sqrt better)
    # Start from these model weights (an xtra checkpoint: a run directory or a .pt file, e.g. one from
    # `xtra import official`) instead of a random init; the optimizer and schedule start fresh. The
    # path is a resource; the file's sha256 is identity (`pretrain_identity`).
    init: str = ""

    def __post_init__(self) -> None:
        in_range(self, "pretrain")
        _positive(self, "samples", "batch_size", "lr", "accumulate", "checkpoint_every", "log_every")
        _require(self.batch_size % self.accumulate == 0,
                 f"pretrain.batch_size={self.batch_size} is not divisible by pretrain.accumulate={self.accumulate}")
        _require(0 <= self.warmup_samples <= self.samples,
                 f"pretrain.warmup_samples={self.warmup_samples} must be in [0, pretrain.samples={self.samples}]")
        _require(0 <= self.min_lr <= self.lr, f"pretrain.min_lr={self.min_lr} must be in [0, pretrain.lr={self.lr}]")
        _require(self.weight_decay >= 0, f"pretrain.weight_decay={self.weight_decay} must be >= 0")
        _require(self.grad_clip >= 0, f"pretrain.grad_clip={self.grad_clip} must be >= 0 (0 = off)")
        _one_of("pretrain.device", self.device, ("auto", "cpu", "cuda"))
        _one_of("pretrain.schedule", self.schedule, ("cosine", "wsd"))
        _one_of("pretrain.cooldown_shape", self.cooldown_shape, ("linear", "1-sqrt"))
        _require(0.0 <= self.cooldown_fraction < 1.0,
                 f"pretrain.cooldown_fraction={self.cooldown_fraction} must be in [0, 1) (0 = no cooldown)")
        if self.schedule == "wsd":
            _require(self.warmup_samples <= self.branch_point(),
                     f"pretrain.warmup_samples={self.warmup_samples} exceeds the wsd branch point "
                     f"{self.branch_point()} (pretrain.samples={self.samples} x (1 - pretrain.cooldown_fraction="
                     f"{self.cooldown_fraction}), at a multiple of pretrain.batch_size={self.batch_size}): "
                     f"the cooldown would start during the warmup")

    def branch_point(self) -> int:
        """wsd: samples seen when the cooldown starts, samples x (1 - cooldown_fraction) rounded down
        to a step boundary (a multiple of batch_size), so a kept checkpoint lands exactly on it; the
        budget itself without a cooldown."""
        if self.cooldown_fraction == 0:
            return self.samples
        cooldown = round(self.samples * self.cooldown_fraction)  # an integer first: no float-boundary drift
        return (self.samples - cooldown) // self.batch_size * self.batch_size


def parse_randaugment(spec: str) -> dict[str, Any]:
    """timm's RandAugment string ("rand-m9-mstd0.5-inc1", optionally "-n2") as a dict: magnitude m,
    its std mstd, inc (the "increasing" op set), n ops per image. ValueError naming probe.randaugment."""
    parts = spec.split("-")
    out: dict[str, Any] = {"m": 9.0, "mstd": 0.0, "inc": 0, "n": 2}  # timm's defaults
    bad = f"probe.randaugment={spec!r} is not a RandAugment spec (allowed: rand-m<M>[-mstd<S>]-inc1[-n<N>], " \
          "e.g. rand-m9-mstd0.5-inc1, or \"\" for none)"
    _require(parts[0] == "rand", bad)
    for part in parts[1:]:
        for key in ("mstd", "inc", "m", "n"):
            if part.startswith(key):
                try:
                    out[key] = float(part[len(key):]) if key in ("m", "mstd") else int(part[len(key):])
                except ValueError:
                    raise ValueError(bad) from None
                break
        else:
            raise ValueError(bad)
    # Only the "increasing" op set (inc1, the official protocol's) is implemented.
    _require(0 <= out["m"] <= 10 and out["mstd"] >= 0 and out["inc"] == 1 and out["n"] >= 1, bad)
    return out


@dataclass(frozen=True)
class ProbeConfig:
    """Linear and attentive probes on the frozen encoder, the official XTRA heads; all learning rates
    train at once (one encoder pass per batch feeds one head per lr), the lr is chosen on val.

    Heads (XTRA's `src/modules/cls.py`): linear = last block's raw tokens, mean over tokens,
    BatchNorm1d(affine=False, eps 1e-6), Linear; attentive = mean of the last `layers` blocks (clamped
    to the depth), BatchNorm over tokens, attention pooling with `attentive_heads` heads (clamped to a
    divisor of the width) and `attentive_queries` learned queries, k/v without bias, Linear.
    Schedule: warmup from lr * `warmup_start` to lr over `warmup_epochs`, cosine down to `min_lr`;
    AdamW(`beta1`, `beta2`), gradient clip `grad_clip` (0 = off), `accumulate` micro-batches per step
    (`batch_size` is the optimizer-step batch). The defaults are the official heads and optimizer with
    a short schedule; the `paper` preset sets the official 100 epochs and augmentation."""

    kinds: tuple[str, ...] = ("linear", "attentive")
    lrs: tuple[float, ...] = (1e-4, 3e-4, 5e-4, 1e-3, 1.5e-3, 2e-3, 4e-3)  # the official grid, trained at once
    epochs: int = 10
    batch_size: int = 256
    accumulate: int = 1  # micro-batches per optimizer step (BatchNorm sees each micro-batch)
    warmup_epochs: int = 1
    warmup_start: float = 0.1  # the warmup starts at lr * warmup_start (official: lr / 10)
    min_lr: float = 1e-5  # the cosine's floor (official: 1e-5)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 3.0  # max gradient norm per head (0 = off)
    linear_weight_decay: float = 0.0
    attentive_weight_decay: float = 0.1
    # adamw = the official recipe above (lrs, epochs, ...); lbfgs = the same linear head solved to
    # convergence on cached features (full-batch L-BFGS, BatchNorm at the train split's statistics),
    # one head per L2 strength in linear_l2 (mean cross-entropy + l2/2 |W|^2), chosen on val.
    linear_solver: str = "adamw"
    linear_l2: tuple[float, ...] = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4)
    linear_max_iter: int = 1000  # L-BFGS iterations per L2 strength (whitened: ~100 reach the optimum)
    feature_dtype: str = "auto"  # encoder forward for the head inputs: auto = bfloat16 on GPUs, float32 on CPUs
    # the AdamW heads' forward and backward while training (weights, optimizer and scoring stay float32):
    # bfloat16 autocast made the attentive heads ~1.4x faster on a CPU with AVX-512 BF16 (docs/bench-cpu-2core-probe.md)
    head_dtype: str = "float32"
    features: str = "raw"  # raw = block outputs as the official probes read them; normed = after the final LayerNorm
    layers: int = 6  # attentive probe: mean of the last `layers` encoder blocks (clamped to the depth)
    attentive_heads: int = 16  # clamped to the largest divisor of the width that is <= this
    attentive_queries: int = 1
    # official = the heads' init in XTRA's cls.py (PyTorch's nn.Linear default, query Normal(0, 0.02));
    # trunc_normal = xtra's before issue #34, kept as the default so the probe key of every study resolved
    # before stays the same (the presets and `xtra probe` set official)
    head_init: str = "trunc_normal"
    # the attentive head trains on whitened token features (ZCA of the train split's tokens), then the
    # whitening is folded into it: the same official head, the same function class, only AdamW's
    # conditioning changes (docs/bench-cpu-2core-probe.md: several points higher in the same epochs)
    attentive_whiten: bool = False
    # score every AdamW head on val after every epoch and keep its best epoch (lr and epoch chosen on val,
    # the test split untouched): a longer schedule can no longer score lower by overfitting
    select_epoch: bool = False
    mask: str = "block"  # block = the pretraining mask; none = full attention
    cache: str = "auto"  # feature cache: auto | memory | disk | off
    augment: bool = False  # official augmentation (below); training then recomputes features every step
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop of both kinds, with a flip where allowed
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    randaugment: str = "rand-m9-mstd0.5-inc1"  # attentive only, timm's syntax ("" = off)
    random_erasing: float = 0.25  # attentive only: probability of one erased box, 'pixel' mode
    limit_train: int = 0  # 0 = the whole train split; else a fixed subset (same for every trial)
    datasets: tuple[str, ...] = ()  # downstream suite: named sets / imagefolder: / wds: paths; () = the trial's data
    at_samples: tuple[int, ...] = ()  # also probe the checkpoints at these samples seen (plus the end)
    points: int = 0  # or: this many evenly spaced checkpoints (the last is the end); 0 = the end only
    along_kinds: tuple[str, ...] = ("linear",)  # of `kinds`, those probed at the earlier checkpoints too

    def __post_init__(self) -> None:
        in_range(self, "probe")
        _require(self.limit_train >= 0, f"probe.limit_train={self.limit_train} must be >= 0 (0 = all)")
        _require(len(self.kinds) > 0, "probe.kinds is empty (allowed: linear, attentive)")
        for kind in self.kinds:
            _one_of("probe.kinds", kind, ("linear", "attentive"))
        _require(len(set(self.kinds)) == len(self.kinds), f"probe.kinds={self.kinds} lists a kind twice")
        _require(len(self.lrs) > 0 and all(lr > 0 for lr in self.lrs),
                 f"probe.lrs={self.lrs} must be a non-empty list of positive learning rates")
        _positive(self, "epochs", "batch_size", "accumulate", "layers", "attentive_heads", "attentive_queries")
        _require(self.batch_size % self.accumulate == 0,
                 f"probe.batch_size={self.batch_size} is not divisible by probe.accumulate={self.accumulate}")
        _require(0 <= self.warmup_epochs < self.epochs,
                 f"probe.warmup_epochs={self.warmup_epochs} must be in [0, probe.epochs={self.epochs})")
        _require(0 < self.warmup_start <= 1, f"probe.warmup_start={self.warmup_start} must be in (0, 1]")
        _require(0 <= self.min_lr <= min(self.lrs),
                 f"probe.min_lr={self.min_lr} must be in [0, min(probe.lrs)={min(self.lrs)}]")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
                 f"probe.beta1={self.beta1}, probe.beta2={self.beta2} must be in [0, 1)")
        _require(self.grad_clip >= 0, f"probe.grad_clip={self.grad_clip} must be >= 0 (0 = off)")
        _require(self.linear_weight_decay >= 0 and self.attentive_weight_decay >= 0,
                 "probe.linear_weight_decay and probe.attentive_weight_decay must be >= 0")
        _one_of("probe.linear_solver", self.linear_solver, ("adamw", "lbfgs"))
        _one_of("probe.head_init", self.head_init, ("official", "trunc_normal"))
        _require(not (self.attentive_whiten and (self.augment or self.cache == "off")),
                 "probe.attentive_whiten=true whitens cached token features, which probe.augment=true or "
                 "probe.cache=off never has (allowed: attentive_whiten=false with them)")
        _positive(self, "linear_max_iter")
        _one_of("probe.feature_dtype", self.feature_dtype, ("auto", "float32", "bfloat16"))
        _one_of("probe.head_dtype", self.head_dtype, ("float32", "bfloat16"))
        _require(len(self.linear_l2) > 0 and all(v >= 0 for v in self.linear_l2),
                 f"probe.linear_l2={self.linear_l2} must be a non-empty list of L2 strengths >= 0")
        _require(not (self.linear_solver == "lbfgs" and self.augment),
                 "probe.linear_solver=lbfgs solves on cached features, which probe.augment=true never caches "
                 "(allowed: linear_solver=adamw with augment, or augment=false)")
        _require(not (self.linear_solver == "lbfgs" and self.cache == "off"),
                 "probe.linear_solver=lbfgs needs the feature cache (allowed: probe.cache=auto|memory|disk)")
        _one_of("probe.features", self.features, ("raw", "normed"))
        _one_of("probe.mask", self.mask, ("block", "none"))
        _one_of("probe.cache", self.cache, ("auto", "memory", "disk", "off"))
        lo, hi = self.crop_scale
        _require(0.0 < lo <= hi <= 1.0, f"probe.crop_scale={self.crop_scale} must satisfy 0 < lo <= hi <= 1")
        lo, hi = self.crop_ratio
        _require(0.0 < lo <= hi, f"probe.crop_ratio={self.crop_ratio} must satisfy 0 < lo <= hi")
        _require(0 <= self.random_erasing <= 1, f"probe.random_erasing={self.random_erasing} must be in [0, 1]")
        if self.randaugment:
            parse_randaugment(self.randaugment)  # one-line ValueError naming probe.randaugment
        for i, name in enumerate(self.datasets):
            _require(isinstance(name, str) and bool(name), f"probe.datasets[{i}]={name!r} must be a dataset name")
        _require(len(set(self.datasets)) == len(self.datasets), f"probe.datasets={self.datasets} lists a set twice")
        _require(all(s > 0 for s in self.at_samples),
                 f"probe.at_samples={self.at_samples} must be positive sample counts")
        _require(list(self.at_samples) == sorted(set(self.at_samples)),
                 f"probe.at_samples={self.at_samples} must be strictly increasing")
        _require(self.points >= 0, f"probe.points={self.points} must be >= 0 (0 = the end only)")
        _require(not (self.points and self.at_samples),
                 f"probe.points={self.points} and probe.at_samples={self.at_samples}: give one of them")
        for kind in self.along_kinds:
            _one_of("probe.along_kinds", kind, ("linear", "attentive"))

    def probe_samples(self, budget: int, batch_size: int = 1) -> tuple[int, ...]:
        """The samples-seen counts to probe for a pretraining budget: `at_samples` plus the end, or
        `points` evenly spaced counts (rounded to step boundaries, multiples of `batch_size`) ending
        at the budget, or just the end. ValueError for a count beyond the budget or off a step
        boundary. The last entry is always `budget` (the run's final checkpoint)."""
        bad = [s for s in self.at_samples if s > budget]
        _require(not bad, f"probe.at_samples={self.at_samples}: {bad} exceed pretrain.samples={budget} "
                          f"(allowed: 1..{budget})")
        off = [s for s in self.at_samples if s % batch_size and s != budget]
        _require(not off, f"probe.at_samples={self.at_samples}: {off} are not step boundaries (allowed: multiples "
                          f"of pretrain.batch_size={batch_size}, or pretrain.samples={budget})")
        if self.points:
            steps = budget // batch_size
            _require(self.points <= max(steps, 1),
                     f"probe.points={self.points} exceeds the {steps} steps of pretrain.samples={budget}")
            early = {max(1, round(steps * (i + 1) / self.points)) * batch_size for i in range(self.points - 1)}
            return tuple(sorted({s for s in early if s < budget} | {budget}))
        return tuple(sorted({*self.at_samples, budget}))


@dataclass(frozen=True)
class TrialConfig:
    """One trial of a study: pretrain, then probe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        in_range(self, "")
        self.probe.probe_samples(self.pretrain.samples, self.pretrain.batch_size)  # within the budget, on steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """What defines the pretraining science: model, the data's identity, the recipe, the seed."""
        return pretrain_identity(self)

    def config_hash(self) -> str:
        """The pretraining identity's hash: names `trials/<hash>/`, stable across paths, devices and
        machines (see `RESOURCE_KEYS`)."""
        return _digest(self.identity())

    def probe_hash(self) -> str:
        """A probe result's key: the pretraining identity plus the probe protocol, so changing the
        protocol re-probes finished checkpoints instead of pretraining again."""
        probe = {k: v for k, v in dataclasses.asdict(self.probe).items() if f"probe.{k}" not in RESOURCE_KEYS
                 and not (k in PROBE_KEYS_IF_SET and v == getattr(_PROBE_DEFAULTS, k))}
        if self.model.order == "pseudo-random":
            # Probed in raster order, as the official Classifier (before: in the first training order,
            # which is random for this order only), so such trials are probed again, never pretrained.
            probe["block_order"] = "raster"
        return _digest({"pretrain": self.config_hash(), "probe": probe})


# ---------------------------------------------------------------------------------------------
# Identity. Bump IDENTITY_VERSION whenever the meaning of a hashed field changes; old study
# directories are then migrated (studies.trialdir.migrate) or refused with a message.

IDENTITY_VERSION = 2

# Resources, not science: where things are, on what they run, how often they are saved or logged.
# Changing one of these never reruns a finished trial.
RESOURCE_KEYS = frozenset({
    "model.attention", "model.activation_checkpointing", "data.root", "data.workers", "pretrain.device",
    "pretrain.compile", "pretrain.checkpoint_every", "pretrain.log_every", "probe.cache",
    "pretrain.init",  # the path; its content's sha256 is identity (see pretrain_identity)
})

# Probe fields added after probed studies existed: left out of the probe key while at their default,
# so those studies are not probed again.
PROBE_KEYS_IF_SET = ("linear_max_iter", "feature_dtype", "head_init", "attentive_whiten", "select_epoch",
                     "head_dtype")
_PROBE_DEFAULTS = ProbeConfig()

# Keys that changed what a trial trains after trials existed, with the value every earlier trial had
# (the official rules came in with issue #34). Such a key enters the identity only when it differs from
# that value, so earlier trials keep their hashes; a config stored before the key existed (a trial's
# config.json, a checkpoint, a resolved study.toml) is read with that value, so an earlier study
# resumes unchanged and never mixes trials of both rules. A study resolved now records today's default.
LEGACY_VALUES: dict[str, Any] = {"model.patch_init": "xavier", "pretrain.decay_positions": False}

PATH_PREFIXES = ("imagefolder:", "wds:")


def _is_legacy(key: str, value: Any) -> bool:
    return key in LEGACY_VALUES and LEGACY_VALUES[key] == value and type(LEGACY_VALUES[key]) is type(value)


def with_legacy_values(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config ({"model": {...}, "pretrain": {...}, ...}) with each LEGACY_VALUES key it
    predates filled in with its legacy value (sections it lacks stay absent)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()}
    for key, value in LEGACY_VALUES.items():
        section, leaf = key.split(".")
        if isinstance(out.get(section), dict):
            out[section].setdefault(leaf, value)
    return out


def recorded_values(stored: bool) -> dict[str, Any]:
    """What a study spec that does not set a LEGACY_VALUES key records for it: the legacy value when
    the spec was stored (a resolved study.toml) before the key existed, else today's default."""
    if stored:
        return dict(LEGACY_VALUES)
    defaults = TrialConfig()
    return {key: getattr(getattr(defaults, key.split(".")[0]), key.split(".")[1]) for key in LEGACY_VALUES}


def data_identity(data: DataConfig) -> dict[str, Any]:
    """The data's identity: its registry name, or for a path-based collection its kind plus the
    content fingerprint (never the path where it happens to live)."""
    fields_ = {k: v for k, v in dataclasses.asdict(data).items() if f"data.{k}" not in RESOURCE_KEYS}
    for prefix in PATH_PREFIXES:
        if data.name.startswith(prefix):
            if data.fingerprint:  # the path is a resource once the content is named
                fields_["name"] = prefix.rstrip(":")
            break
    return fields_


def pretrain_identity(cfg: TrialConfig) -> dict[str, Any]:
    def section(name: str, obj: Any) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(obj).items()
                if f"{name}.{k}" not in RESOURCE_KEYS and not _is_legacy(f"{name}.{k}", v)}

    pretrain = section("pretrain", cfg.pretrain)
    if cfg.pretrain.init:  # the initial weights define the science: their content, never their path
        pretrain["init_sha256"] = file_sha256(cfg.pretrain.init)
    return {"version": IDENTITY_VERSION, "model": section("model", cfg.model), "data": data_identity(cfg.data),
            "pretrain": pretrain, "seed": cfg.seed}


def file_sha256(path: str) -> str:
    """sha256 of a checkpoint's bytes (a directory: its checkpoint.pt), cached per (path, size, mtime)."""
    p = os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path
    if not os.path.isfile(p):
        raise ValueError(f"pretrain.init={path!r}: no checkpoint here (allowed: a run directory or a checkpoint file)")
    st = os.stat(p)
    return _sha256(os.path.realpath(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Sizes as data. The paper's sizes follow XTRA (arXiv 2411.15648) Sec. 4 / appendix.

SIZES: dict[str, dict[str, Any]] = {
    # Tests: a step in well under a second.
    "tiny": dict(img_size=32, patch_size=8, channels=1, width=32, depth=2, num_heads=2,
                 proj_hidden=64, pred_width=32, pred_depth=1, pred_num_heads=2, head_hidden=64),
    # Real CPU experiments on 32x32 inputs (8x8 patch grid: k in 1, 2, 4, 8).
    "cpu-s": dict(img_size=32, patch_size=4, channels=1, width=96, depth=4, num_heads=3,
                  proj_hidden=384, pred_width=96, pred_depth=2, pred_num_heads=3, head_hidden=384),
    "cpu-m": dict(img_size=32, patch_size=4, channels=1, width=192, depth=6, num_heads=6,
                  proj_hidden=768, pred_width=192, pred_depth=3, pred_num_heads=6, head_hidden=768),
    # ViT-B/16 at 256 px: projection 4096 -> 384, predictor depth 8 heads 6, pixel head 6144 (the official
    # ablation configs, config/ablations/); k = 4 (16 blocks of 4x4 patches) as every official ViT-B
    # config (config/base.yaml's enc.block_size, which the ablation baseline and xtra_b_in1k_pt keep).
    "vit-b/16": dict(img_size=256, patch_size=16, channels=3, width=768, depth=12, num_heads=12,
                     proj_hidden=4096, pred_width=384, pred_depth=8, pred_num_heads=6, head_hidden=6144,
                     block_size=4),
    # ViT-H/14 at 224 px: projection 5120 -> 640 (the official config), predictor heads 8, pixel head 9408;
    # drop path 0.2 as the official run (config/pretrain/xtra_h_in21k_pt) and k = 4 (16 blocks of 4x4
    # patches), config/base.yaml's enc.block_size, which that run keeps.
    "vit-h/14": dict(img_size=224, patch_size=14, channels=3, width=1280, depth=32, num_heads=16,
                     proj_hidden=5120, pred_width=640, pred_depth=8, pred_num_heads=8, head_hidden=9408,
                     drop_path=0.2, block_size=4),
}


def model_config(size: str, **overrides: Any) -> ModelConfig:
    if size not in SIZES:
        raise ValueError(f"size={size!r} is not known (allowed: {', '.join(SIZES)})")
    return ModelConfig(**{**SIZES[size], **overrides})
