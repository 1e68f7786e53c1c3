"""What a run of a study must do, decided once and without Ray.

``make_plan`` expands the study a single time and reads each trial's state through
``xtra.trialdir``: which trials are finished (reused), which must run (new, interrupted, failed,
or pretrained under the same identity but not yet probed with this probe protocol), and for a
search how many points are left and which interrupted points must run again from their checkpoints.
Everything downstream (the runner, the Ray tuner, ``xtra study show/status``) reads the plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studies.spec import Study, StudyError, TrialSpec
from xtra import trialdir as td
from xtra.config import PATH_PREFIXES


@dataclass(frozen=True)
class Plan:
    study: Study
    trials: tuple[TrialSpec, ...]  # a grid's expansion (empty for a search)
    states: tuple[td.TrialState, ...]  # every trial of the study as it stands on disk
    pending: tuple[TrialSpec, ...]  # grid trials this run must start or continue
    reused: tuple[str, ...]  # config hashes already finished under this probe protocol
    reprobe: tuple[str, ...]  # pretraining finished, probe protocol new: probe again, pretrain nothing
    search_left: int = 0  # Optuna points still to propose
    search_rerun: tuple[dict[str, Any], ...] = ()  # params of search trials interrupted mid-run

    @property
    def empty(self) -> bool:
        return not self.pending and self.search_left <= 0 and not self.search_rerun

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.states:
            out[s.status] = out.get(s.status, 0) + 1
        return out


def with_data_identity(study: Study) -> Study:
    """Fill ``data.fingerprint`` for a path-based collection, so the trials' identity names the
    collection's content, not the path it happens to live at (a moved dataset reruns nothing)."""
    name = str(study.base.get("data.name", ""))
    if not name.startswith(PATH_PREFIXES) or study.base.get("data.fingerprint"):
        return study
    from xtra.data import fingerprint

    cfg = study.base_config()
    try:
        value = fingerprint(cfg.data)
    except (OSError, ValueError) as err:
        raise StudyError(f"{study.source}: data.name={name!r}: {err}") from None
    return dataclasses.replace(study, base={**study.base, "data.fingerprint": value})


def _needs_probe(state: td.TrialState, spec_probe_hash: str) -> bool:
    return state.row is not None and state.row.get("probe_hash") != spec_probe_hash


def make_plan(study: Study, study_dir: Path, running: bool = False) -> Plan:
    """The plan for ``study`` in ``study_dir`` (``running``: a live runner holds it, for status)."""
    from studies import state as st

    study_dir = Path(study_dir)
    if study.search is None:
        specs = tuple(study.expand())
        states = []
        pending, reused, reprobe = [], [], []
        for spec in specs:
            state = td.read_state(td.path(study_dir, spec.config_hash), running=running, trial_id=spec.trial_id,
                                  params=spec.params, seed=spec.seed, config=spec.config)
            if state.status == td.FINISHED and _needs_probe(state, spec.config.probe_hash()):
                reprobe.append(spec.config_hash)
                state = dataclasses.replace(state, status="pending", row=None,
                                            error="pretrained; to be probed with the new probe protocol")
            states.append(state)
            if state.status == td.FINISHED:
                reused.append(spec.config_hash)
            elif state.status != "running":
                pending.append(spec)
        return Plan(study, specs, tuple(states), tuple(pending), tuple(reused), tuple(reprobe))
    states = st.study_trials(study, study_dir, running=running)
    done = [s for s in states if s.status in td.TERMINAL]
    rerun = tuple(s.params for s in states if s.status == "interrupted")
    left = max(study.search.num_samples - len(done) - len(rerun), 0)
    return Plan(study, (), tuple(states), (), tuple(s.config_hash for s in states if s.status == td.FINISHED), (),
                search_left=left, search_rerun=rerun)
