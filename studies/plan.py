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

from xtra import trialdir as td
from xtra.config import PATH_PREFIXES
from xtra.studies.spec import Study, StudyError, TrialSpec


@dataclass(frozen=True)
class Job:
    """A unit of work for Ray beyond an ordinary trial: a wsd trunk, or a trial run as a branch of one."""

    config_hash: str  # the directory it runs in
    config: Any  # its TrialConfig (a trunk's: the recipe without cooldown, run to its reach)
    trunk: str  # the trunk's directory name
    wsd: td.WsdJob  # what the run does (xtra.trial.run_trial): the one record of it, from here to the trial

    @property
    def role(self) -> str:
        return self.wsd.role

    @property
    def start(self) -> int:
        """A branch: samples at which it leaves the trunk."""
        return self.wsd.start

    @property
    def keep_at(self) -> tuple[int, ...]:
        """A trunk: where it keeps checkpoints."""
        return self.wsd.keep_at


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
    trunks: tuple[Job, ...] = ()  # wsd trunks to run (or continue) before/beside their branches
    branches: dict[str, Job] = dataclasses.field(default_factory=dict)  # pending trial hash -> its branch job
    samples: dict[str, int] = dataclasses.field(default_factory=dict)  # trained vs cosine-equivalent, this run
    ladder: dict[str, Any] | None = None  # a halving search's rung ladder as decided so far (xtra.studies.halving)
    rung: int = -1  # a halving search: the rung this plan runs (-1: none left)

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
    from xtra import studydir as st

    study_dir = Path(study_dir)
    if study.search is not None and study.search.halving:
        return _plan_halving(study, study_dir, running)
    if study.search is None:
        specs = tuple(study.expand())
        states, pending, reused, reprobe = _grid_states(specs, study_dir, running)
        trunks, branches, samples = _plan_wsd(study_dir, [s for s in pending if s.config_hash not in reprobe])
        return Plan(study, specs, tuple(states), tuple(pending), tuple(reused), tuple(reprobe), trunks=trunks,
                    branches=branches, samples=samples)
    states = st.study_trials(study, study_dir, running=running)
    done = [s for s in states if s.status in td.TERMINAL]
    rerun = tuple(s.params for s in states if s.status == "interrupted")
    left = max(study.search.num_samples - len(done) - len(rerun), 0)
    return Plan(study, (), tuple(states), (), tuple(s.config_hash for s in states if s.status == td.FINISHED), (),
                search_left=left, search_rerun=rerun)


def _grid_states(specs: tuple[TrialSpec, ...] | list[TrialSpec], study_dir: Path, running: bool
                 ) -> tuple[list[td.TrialState], list[TrialSpec], list[str], list[str]]:
    """Each fixed trial's state on disk: (states, pending, reused, reprobe)."""
    states, pending, reused, reprobe = [], [], [], []
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
    return states, pending, reused, reprobe


def _plan_halving(study: Study, study_dir: Path, running: bool) -> Plan:
    """The rung a halving search runs now (``xtra.studies.halving``): every rung decided so far is read
    from the ladder (or decided from its trials on disk, the same way), the first undecided one is the
    plan's pending grid of wsd branches (their trunks continue from the previous rung's branch point)."""
    from xtra import studydir as st
    from xtra.studies import halving

    halving.check(study)
    ladder = st.read_ladder(study_dir)
    if ladder is None:
        ladder = halving.new_ladder(study)
    else:
        halving.check_ladder(study, ladder, str(study_dir))
    ladder = {**ladder, "rungs": [dict(r) for r in ladder["rungs"]]}
    configs, metric, mode, eta = ladder["configs"], study.search.metric, study.search.mode, study.search.eta
    budgets = halving.rung_budgets(study)
    alive = list(range(len(configs)))
    all_states: list[td.TrialState] = []
    reused: list[str] = []
    for r, budget in enumerate(budgets):
        specs = [halving.trial_spec(study, i, configs[i], budget) for i in alive]
        states, pending, done, reprobe = _grid_states(specs, study_dir, running)
        all_states += states
        reused += done
        if r < len(ladder["rungs"]):  # decided: the stored promotions, whatever the disk says now
            alive = list(ladder["rungs"][r]["promoted"])
            continue
        if any(s.status not in td.TERMINAL for s in states):  # this rung runs now
            trunks, branches, samples = _plan_wsd(study_dir, [s for s in pending if s.config_hash not in reprobe])
            return Plan(study, tuple(specs), tuple(all_states), tuple(pending), tuple(reused), tuple(reprobe),
                        trunks=trunks, branches=branches, samples=samples, ladder=ladder, rung=r)
        entries = [{"config": i, "config_hash": spec.config_hash, "trial_id": spec.trial_id, "status": state.status,
                    "value": halving.value_of(state.row, metric)}
                   for i, spec, state in zip(alive, specs, states, strict=True)]
        keep = max(1, len(alive) // eta) if r < len(budgets) - 1 else 1
        alive = halving.promote(entries, keep, mode)
        ladder["rungs"].append({"samples": budget, "entries": entries, "promoted": alive})
    return Plan(study, (), tuple(all_states), (), tuple(reused), (), ladder=ladder)


TRUNK_GRID = 8  # extra evenly spaced checkpoints a trunk keeps, so a budget added later starts near it


def _plan_wsd(study_dir: Path, pending: list[TrialSpec]) -> tuple[tuple[Job, ...], dict[str, Job], dict[str, int]]:
    """Trunks and branches for the pending wsd trials (``xtra.schedule``): trials that differ only in
    budget and cooldown share one trunk (``trunk_identity``), trained once to the deepest branch point
    with checkpoints kept at every branch point (and probe point before it); each trial continues
    from its point. A trunk finished earlier is reused, and continued when a deeper point is asked;
    a point it did not keep starts from the nearest earlier checkpoint it did keep."""
    from xtra.schedule import plan_trunks

    wsd = [s for s in pending if s.config.pretrain.schedule == "wsd"]
    if not wsd:
        return (), {}, {}
    by_hash = {s.config_hash: s for s in wsd}
    jobs, branches = [], {}
    trained = cosine = 0
    for trunk in plan_trunks([s.config for s in wsd]):
        tdir = td.path(study_dir, trunk.trunk_id)
        state = td.read_state(tdir, running=False)
        reached = int(state.row.get("samples_seen") or 0) if state.row else 0
        kept = set(td.kept_samples(tdir))
        if state.row and state.row.get("role") == "trunk" and state.status == td.FINISHED:
            # a copy of a study kept in storage holds no checkpoints: the finished trunk's row names those it kept
            kept |= {int(s) for s in state.row.get("keep_at") or ()}
        resume_at = td.checkpoint_samples(tdir) or 0
        reach = max(trunk.reach, reached)
        batch = trunk.config.pretrain.batch_size
        grid = {max(1, round(reach * i / TRUNK_GRID / batch)) * batch for i in range(1, TRUNK_GRID)}
        probe_points = set()
        for b in trunk.branches:
            bp = b.pretrain.branch_point()
            probe_points |= {p for p in b.probe.probe_samples(b.pretrain.samples, b.pretrain.batch_size) if p <= bp}
        wanted = sorted({p for p in (*trunk.branch_points, *grid, *probe_points)
                         if p <= reach and p > resume_at and p >= trunk.config.pretrain.warmup_samples} | {reach})
        will_keep = kept | set(wanted)
        needs_run = reached < trunk.reach
        if needs_run:
            cfg = dataclasses.replace(trunk.config, pretrain=dataclasses.replace(trunk.config.pretrain, samples=reach))
            jobs.append(Job(trunk.trunk_id, cfg, trunk.trunk_id, td.WsdJob(td.TRUNK, keep_at=tuple(wanted))))
            trained += reach - resume_at
        for b in trunk.branches:
            h = b.config_hash()
            bp = b.pretrain.branch_point()
            available = will_keep if needs_run else kept
            start = max((p for p in available if p <= bp), default=0)
            cosine += b.pretrain.samples
            trained += b.pretrain.samples - start
            if start > 0 and h in by_hash:
                branches[h] = Job(h, b, trunk.trunk_id, td.WsdJob(td.BRANCH, trunk_dir=str(tdir), start=start))
    return tuple(jobs), branches, {"trained": trained, "cosine_equivalent": cosine}
