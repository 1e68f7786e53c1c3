"""How many loader workers keep one GPU fed: the GPU's images/s (from ``flops_per_image``) over a
loader worker's measured decode + augment rate.
"""

from __future__ import annotations

import math

from xtra.costs import H200_BF16_PEAK, TARGET_MFU, flops_per_image

# Images/s of one loader worker (read + decode + RandomResizedCrop + flip, RGB) on ImageNet-like JPEGs
# of about 500x375, by output size, measured by `xtra bench --sections data` on this project's shared
# 2-core machine (docs/bench-cpu-2core-data.md). A dedicated server core is faster, so advice from
# these figures errs towards more workers.
MEASURED_WORKER_RATE = {32: 129.0, 256: 43.5}


def workers_advice(model_cfg, per_worker_images_per_s: float | None = None, *, peak_flops: float = H200_BF16_PEAK,
                   mfu: float = TARGET_MFU, headroom: float = 1.25, gpu: str = "H200") -> dict:
    """How many loader worker processes keep one GPU fed: the GPU's images/s at ``mfu`` of
    ``peak_flops`` (from ``flops_per_image``), times ``headroom``, over the per-worker decode +
    augment rate (default: ``MEASURED_WORKER_RATE`` at the nearest measured size). Returns the
    figures and a one-line ``advice`` (what `xtra study show --preset paper` prints)."""
    measured = per_worker_images_per_s is None
    if measured:
        nearest = min(MEASURED_WORKER_RATE, key=lambda s: abs(s - model_cfg.img_size))
        per_worker_images_per_s = MEASURED_WORKER_RATE[nearest]
    if per_worker_images_per_s <= 0:
        raise ValueError(f"per_worker_images_per_s={per_worker_images_per_s} must be > 0 (a measured rate)")
    gpu_ips = mfu * peak_flops / flops_per_image(model_cfg)
    workers = math.ceil(headroom * gpu_ips / per_worker_images_per_s)
    source = "measured here by `xtra bench --sections data`" if measured else "given"
    advice = (f"data loading: one {gpu} at {mfu:.0%} MFU trains ~{gpu_ips:,.0f} images/s of this model at "
              f"{model_cfg.img_size} px; at {per_worker_images_per_s:,.0f} images/s per loader worker (decode + crop, "
              f"{source}) it needs ~{workers} loader workers per GPU: --set data.workers={workers}, "
              f"--cpus-per-trial >= {workers + 1} per GPU")
    return {"gpu_images_per_s": gpu_ips, "per_worker_images_per_s": per_worker_images_per_s, "workers": workers,
            "mfu": mfu, "peak_flops": peak_flops, "advice": advice}
