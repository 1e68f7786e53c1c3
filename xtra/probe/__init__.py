"""Probes on the frozen encoder with the official XTRA heads: linear and attentive.

The heads follow XTRA's `src/modules/cls.py` (tested against a transcription of it): both read the
raw block outputs (no final LayerNorm). Linear: the last block, mean over tokens,
BatchNorm1d(affine=False, eps 1e-6), Linear. Attentive: the mean of the last 6 blocks (clamped to the
depth), BatchNorm over tokens, attention pooling with 16 heads (clamped to a divisor of the width on
small models) and 1 learned query, k/v without bias, Linear. Schedule: warmup from lr/10, cosine to
`min_lr`, AdamW betas (0.9, 0.95), gradient clip 3.0, `accumulate` micro-batches per step.
Augmentation (`probe.augment`): RandomResizedCrop + flip for both kinds, plus RandAugment and random
erasing for the attentive probe (`xtra.probe.augment`, no torchvision/timm).

All learning rates train at once: one encoder forward per batch feeds N independent heads, one per
learning rate, each with its own optimizer and schedule, and every head starts from the same seeded
initial state, so a head trained together with others is the head trained alone (tested).
Randomness (initialization, shuffling, augmentation) depends only on ``(seed, kind)`` and the
epoch / step, never on the number of heads.

Without augmentation the head inputs (the pooled last-layer features for the linear probe, the
token features for the attentive probe when they are small) are computed once and cached, in
memory or in a scratch ``np.memmap`` on disk; every epoch then trains on the cache.

Model selection is honest: the learning rate is chosen on ``dataset.val`` (carved from the training
set by the data module) and the test top-1 is reported for that one head only.

Modules, bottom up: `schedule` (lr schedule, seeds, scoring epochs), `heads` (the heads and their
optimizer), `features` (head inputs and their caches), `augment` (the training augmentation),
`engine` (training N heads at once, L-BFGS, evaluation), `select` (`probe()`: every kind and lr,
chosen on val), `run` (probing checkpoints: `probe_run`, `probe_checkpoints`).
"""

from xtra.probe.augment import after_crop, augmenter, probe_augment
from xtra.probe.engine import LBFGS_MAX_ITER, evaluate, fit_linear_lbfgs, train_heads
from xtra.probe.features import (
    DISK_CACHE_BYTES,
    MEMORY_CACHE_BYTES,
    Source,
    Whitening,
    build_caches,
    cache_mode,
    head_inputs,
    head_inputs_all,
    input_shape,
)
from xtra.probe.heads import (
    BN_EPS,
    AttentiveHead,
    LinearHead,
    attentive_heads,
    batched_logits,
    make_head,
    make_head_optimizer,
    probe_layers,
    protocol,
    share_norm,
)
from xtra.probe.run import (
    PROBE_JSON,
    PROBE_RANDOM_JSON,
    load_encoder,
    probe_checkpoints,
    probe_data_configs,
    probe_run,
    random_encoder,
    run_configs,
)
from xtra.probe.schedule import (
    IMPROVING_TOL,
    IMPROVING_Z,
    check_epochs,
    probe_lr_at,
    probe_seed,
    steps_per_epoch,
    still_improving,
)
from xtra.probe.select import Log, check_fits, device_of, limit_train, probe, train_adamw, train_probe

__all__ = [
    "BN_EPS", "DISK_CACHE_BYTES", "IMPROVING_TOL", "IMPROVING_Z", "LBFGS_MAX_ITER", "MEMORY_CACHE_BYTES", "PROBE_JSON",
    "Source", "Whitening", "augmenter", "build_caches", "device_of", "probe_seed",
    "PROBE_RANDOM_JSON", "AttentiveHead", "LinearHead", "Log", "after_crop", "attentive_heads", "cache_mode",
    "check_epochs", "check_fits", "evaluate", "fit_linear_lbfgs", "head_inputs", "head_inputs_all", "input_shape",
    "limit_train", "load_encoder", "probe_lr_at", "make_head", "make_head_optimizer", "probe", "probe_augment",
    "probe_checkpoints", "probe_data_configs", "probe_layers", "probe_run", "protocol", "random_encoder",
    "run_configs", "share_norm", "batched_logits", "steps_per_epoch", "still_improving", "train_adamw",
    "train_heads", "train_probe",
]
