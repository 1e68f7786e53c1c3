"""isoFLOP lines (Chinchilla's approach 2): a derived ``compute`` axis expanded into trials with
D = C / F(N).

A study file lists compute budgets C (training FLOPs per trial) beside its size axis::

    [axes]
    compute = [2e12, 4e12, 8e12]                       # the derived axis: one isoFLOP line per value
    width = [{ "model.width" = 24, ... }, ...]         # the sizes on every line
    "model.block_size" = [1, 2]                        # other axes cross as usual

Every axis that sets a ``model.*`` key other than the block size is a size axis: they are merged with
the budgets into one zip group, ``samples``, whose rows are (pretrain.samples, the size's keys), with
D = C / F(N) from xtra's own training FLOPs per image (``xtra.costs.flops_per_image``, affine in N),
rounded to whole batches. The block size is left a crossed axis (the reports compare k on it); F moves
with k by the pixel head only, so the line is defined at the smallest k swept and every other k is
checked to stay on it. A trial more than ``MAX_OFF_LINE`` off its line is refused in one line; how far
each line's trials are from it is what ``xtra.studies.isoflop_lines.lines`` reports (``xtra study show``).

The study.toml written into a study directory holds the expanded zip group, so a study resumes with
the same trials without this module; the reports find the lines again from each trial's FLOPs.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from xtra.config import TrialConfig, model_config
from xtra.costs import flops_per_image
from xtra.overrides import override
from xtra.studies.spec import Axis, StudyError, literal, one_line, parse_set

COMPUTE_AXIS = "compute"  # the derived axis' name in [axes]
LINE_AXIS = "samples"  # the zip group it becomes: pretrain.samples first, so trial ids read samples=D
MAX_OFF_LINE = 0.05  # |F(N) * D / C - 1| allowed after rounding D to whole batches (and across k)
MAX_BUDGETS = 64
BLOCK_KEY = "model.block_size"


def parse_compute_axis(values: Any, label: str) -> Axis:
    """The ``compute`` axis: distinct positive numbers (training FLOPs per trial), one line each."""
    if not isinstance(values, list) or not values or len(values) > MAX_BUDGETS:
        raise StudyError(f"{label}={literal(values)}: must be a list of 1 to {MAX_BUDGETS} compute budgets "
                         f"(training FLOPs per trial, e.g. [2e12, 4e12, 8e12])")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise StudyError(f"{label}={literal(v)}: a compute budget must be a number of FLOPs > 0")
    if len(set(values)) != len(values):
        raise StudyError(f"{label}={literal(values)}: compute budgets repeat")
    return Axis(COMPUTE_AXIS, (COMPUTE_AXIS,), tuple({COMPUTE_AXIS: float(v)} for v in values))


def _is_size_axis(axis: Axis) -> bool:
    return any(k.startswith("model.") and k != BLOCK_KEY for k in axis.keys)


def expand(axes: dict[str, Axis], size: str, base: dict[str, Any], src: str,
           axis_labels: dict[str, str]) -> dict[str, Axis]:
    """Replace the ``compute`` axis and the size axes by the zip group of isoFLOP points (no compute
    axis: ``axes`` unchanged). One-line StudyError for a grid that cannot lie on its lines."""
    if COMPUTE_AXIS not in axes:
        return axes
    label = axis_labels.get(COMPUTE_AXIS, f"{src}: axes.{COMPUTE_AXIS}")
    swept = {k for a in axes.values() for k in a.keys}
    if "pretrain.samples" in swept:
        raise StudyError(f"{label}: pretrain.samples is swept too; on an isoFLOP line D = C / F(N) "
                         f"(remove the samples axis)")
    sizes = [a for a in axes.values() if _is_size_axis(a)]
    if not sizes:
        raise StudyError(f"{label}: an isoFLOP study needs a size axis (an axis setting model.* keys, e.g. "
                         f"width = [{{ \"model.width\" = 32, \"model.num_heads\" = 2 }}, ...])")
    try:
        root = override(TrialConfig(model=model_config(size)), base)
    except ValueError:
        return axes  # the base is invalid on its own: the loader's validation names the key
    ks = [v[BLOCK_KEY] for v in axes[BLOCK_KEY].values] if BLOCK_KEY in axes else [root.model.block_size]
    line_k = min(ks)
    batch = root.pretrain.batch_size
    rows = []
    for budget in axes[COMPUTE_AXIS].values:
        c = budget[COMPUTE_AXIS]
        for combo in itertools.product(*(a.values for a in sizes)):
            params: dict[str, Any] = {}
            for value in combo:
                params.update(value)
            shown = ", ".join(f"{k}={literal(v)}" for k, v in params.items())
            try:
                f_line = flops_per_image(override(root, {**params, BLOCK_KEY: line_k}).model)
                f_each = [flops_per_image(override(root, {**params, BLOCK_KEY: k}).model) for k in ks]
            except ValueError as e:
                raise StudyError(f"{src}: axes {shown}: {one_line(e)}") from None
            samples = max(1, round(c / f_line / batch)) * batch
            worst = max(f_each, key=lambda f: abs(f * samples / c - 1))
            off = worst * samples / c - 1
            if abs(off) > MAX_OFF_LINE:
                raise StudyError(f"{label}={literal(c)}: {shown} trains {samples:,} samples ({samples // batch} "
                                 f"batches of {batch}), {off:+.1%} off the line (allowed: within "
                                 f"{MAX_OFF_LINE:.0%}; raise the budget or lower pretrain.batch_size)")
            if samples <= root.pretrain.warmup_samples:
                raise StudyError(f"{label}={literal(c)}: {shown} gets {samples:,} samples, not past "
                                 f"pretrain.warmup_samples={root.pretrain.warmup_samples:,} (raise the budget or "
                                 f"lower the warmup)")
            rows.append({"pretrain.samples": samples, **params})
    keys = tuple(rows[0])
    out: dict[str, Axis] = {}
    for name, axis in axes.items():
        if name == COMPUTE_AXIS:
            out[LINE_AXIS] = Axis(LINE_AXIS, keys, tuple(rows))
            axis_labels[LINE_AXIS] = label
        elif axis not in sizes:
            out[name] = axis
    return out


# ---------------------------------------------------------------------------------------------
# Lines found again from the trials (a resolved study, a report): compute = FLOPs/image x samples


def nominal_budgets(study: Any) -> list[float]:
    """The compute budgets the study asked for, read again from its file (--set, then its preset's axes, then
    its own [axes]); [] for a resolved study.toml, which holds the expanded points only."""
    import tomllib

    for text in reversed(study.sets):
        key, value = parse_set(text)
        if key in (COMPUTE_AXIS, f"axes.{COMPUTE_AXIS}"):
            return [float(v) for v in (value if isinstance(value, list) else [value])]
    if study.path is None:
        return []
    try:
        raw = tomllib.loads(study.path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return []
    if raw.get("preset"):
        return []
    preset = raw.get("presets", {}).get(study.preset or "", {}).get("axes", {})
    values = preset.get(COMPUTE_AXIS, raw.get("axes", {}).get(COMPUTE_AXIS, []))
    return [float(v) for v in values] if isinstance(values, list) else []
