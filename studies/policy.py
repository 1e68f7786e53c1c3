"""What a study run asks before it starts, the same for the CLI and the Python API.

- ``confirm_cost``: a study whose pretraining is estimated above ``CONFIRM_GPU_HOURS`` (``study show``'s
  estimate) runs only when told yes, so a typo in a sample budget cannot book a cluster for a month.
- ``default_out``: where a study runs when no directory is given: ``runs/studies/<name>-<preset>``.
"""

from __future__ import annotations

from pathlib import Path

from xtra.costs import flops_per_image, gpu_hours
from xtra.studies.spec import Study, StudyError

CONFIRM_GPU_HOURS = 1000  # a run estimated above this needs yes (the shipped paper presets are < 300)
DEFAULT_ROOT = Path("runs") / "studies"


def estimated_gpu_hours(study: Study) -> float:
    """The study's pretraining cost as `xtra study show` estimates it (O(trials), no model built); a
    halving search costs what its rungs train, not its full grid."""
    if study.search is not None and study.search.halving:
        from xtra.studies.halving import planned_samples

        return float(planned_samples(study)["gpu_hours"])
    total = sum(gpu_hours(flops_per_image(t.config.model), t.config.pretrain.samples) for t in study.expand())
    if study.search is not None:
        base = study.base_config()
        total += gpu_hours(flops_per_image(base.model), base.pretrain.samples) * study.search.num_samples
    return total


def confirm_cost(study: Study, yes: bool) -> str | None:
    """Refuse (StudyError, one line) a study above CONFIRM_GPU_HOURS unless ``yes``; with yes, a note
    saying what is being run."""
    cost = estimated_gpu_hours(study)
    if cost <= CONFIRM_GPU_HOURS:
        return None
    if not yes:
        raise StudyError(f"{study.name}: an estimated {cost:,.0f} GPU-hours of pretraining (see `xtra study show`), "
                         f"over the {CONFIRM_GPU_HOURS:,} that run without asking; pass --yes (Python: yes=True) "
                         f"to run it")
    return f"running an estimated {cost:,.0f} GPU-hours of pretraining (told yes)"


def default_out(study: Study, given: str | Path | None = None) -> Path:
    """The study directory: ``given`` when it names an existing study directory, else
    runs/studies/<name>-<preset> (relative to the working directory, as a user expects)."""
    if given is not None and Path(given).is_dir():
        return Path(given)
    return DEFAULT_ROOT / (f"{study.name}-{study.preset}" if study.preset else study.name)
