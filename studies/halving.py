"""Successive halving whose rungs are completed budgets: wsd cooldown branches (``[search] kind = "halving"``).

Every configuration (a grid of the space's choices, or Optuna's sampler) trains a constant-lr trunk to
its first rung's branch point; a cooldown branch there (the study's ``pretrain.cooldown_fraction``) is a
completed model of that budget, bitwise the wsd run of that budget trained alone, probed like any
trial. The top 1/eta by the search's metric continue their trunk to the next rung; the last rung is the
full budget, so its survivors are ordinary trials (Hyperband's successive halving, Li et al. 2018, with
the wsd scaling work's branches as rungs: Hägele et al. 2024). Nothing here imports Ray: the plan reads
the ladder from disk (``xtra.studies.plan``), the tuner runs one rung at a time.

The ladder (``STUDY_DIR/halving.json``, through ``xtra.studydir``) records the configurations once
proposed and, per decided rung, every trial's metric and who was promoted, so a resumed driver (or
``xtra study status``) sees the same configurations and the same promotions.
"""

from __future__ import annotations

import math
from typing import Any

from xtra.studies.spec import Study, StudyError, TrialSpec, literal, trial_id_value

LADDER_VERSION = 1
# Keys a halving search sets itself at every rung: the space must leave them alone.
RUNG_KEYS = ("pretrain.samples", "pretrain.schedule", "pretrain.cooldown_fraction", "pretrain.cooldown_shape")


def rung_budgets(study: Study) -> tuple[int, ...]:
    """The rungs' budgets in samples: the study's own, or pretrain.samples / eta^i for as many rungs as
    the configurations allow (1 + floor(log_eta n)), each a whole number of batches."""
    s = study.search
    if s.rungs:
        return s.rungs
    full = study.base_config().pretrain.samples
    batch = study.base_config().pretrain.batch_size
    count = 1
    while s.eta ** count <= s.num_samples:
        count += 1
    budgets = [max(batch, round(full / s.eta ** (count - 1 - i) / batch) * batch) for i in range(count - 1)]
    return (*sorted(set(budgets)), full) if budgets and budgets[-1] < full else (full,)


def rung_sizes(study: Study) -> tuple[int, ...]:
    """How many configurations train at each rung: n, n // eta, ..., never fewer than one."""
    sizes, n = [], study.search.num_samples
    for _ in rung_budgets(study):
        sizes.append(n)
        n = max(1, n // study.search.eta)
    return tuple(sizes)


def _max_value(study: Study, key: str, base: Any) -> Any:
    dom = study.search.space.get(key)
    if dom is None:
        return base
    return max(dom["values"]) if dom["type"] == "choice" else dom["high"]


def check(study: Study) -> None:
    """A halving search fits the study's recipe (one line naming the key and value otherwise)."""
    s = study.search
    label = f"{study.source}: search"
    for key in RUNG_KEYS:
        if key in s.space:
            raise StudyError(f"{label}.space.{key}: a halving search sets {key} itself at every rung "
                             f"(allowed in the space: keys that fix a trunk, e.g. pretrain.lr, model.width)")
    base = study.base_config()
    p = base.pretrain
    if p.schedule != "wsd":
        raise StudyError(f"{study.source}: pretrain.schedule={literal(p.schedule)}: a halving search's rungs are wsd "
                         f"cooldown branches (set \"pretrain.schedule\" = \"wsd\")")
    budgets = rung_budgets(study)
    if budgets[-1] != p.samples:
        raise StudyError(f"{label}.rungs={literal(list(budgets))}: the last rung must be the full budget, "
                         f"pretrain.samples={p.samples}")
    warmup = _max_value(study, "pretrain.warmup_samples", p.warmup_samples)
    for budget in budgets:
        bp = _branch_point(p, budget)
        if bp <= 0 or bp < warmup or bp == budget:
            raise StudyError(f"{label}.rungs={literal(list(budgets))}: rung {budget} branches at {bp} samples, which "
                             f"must be > 0, >= the largest warmup ({warmup}) and leave a cooldown (raise the first "
                             f"rung or lower the warmup)")
    if len(set(budgets)) != len(budgets):
        raise StudyError(f"{label}.rungs={literal(list(budgets))}: budgets repeat")


def propose(study: Study) -> list[dict[str, Any]]:
    """The configurations, in order: every combination of the choices (``sampler = "grid"``), or
    ``num_samples`` distinct draws of Optuna's TPE sampler seeded with ``search.seed`` (before any
    result, TPE draws independently: the rungs, not the sampler, do the selecting)."""
    s = study.search
    space = s.space
    if s.sampler == "grid":
        import itertools

        keys = list(space)
        combos = itertools.product(*(space[k]["values"] for k in keys))
        return [dict(zip(keys, c, strict=True)) for c in itertools.islice(combos, s.num_samples)]
    import optuna

    dists = {}
    for key, dom in space.items():
        if dom["type"] == "loguniform":
            dists[key] = optuna.distributions.FloatDistribution(dom["low"], dom["high"], log=True)
        elif dom["type"] == "uniform":
            dists[key] = optuna.distributions.FloatDistribution(dom["low"], dom["high"])
        elif dom["type"] == "int":
            dists[key] = optuna.distributions.IntDistribution(dom["low"], dom["high"])
        else:
            dists[key] = optuna.distributions.CategoricalDistribution(list(dom["values"]))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=s.seed)
    opt = optuna.create_study(sampler=sampler, direction="maximize" if s.mode == "max" else "minimize")
    out: list[dict[str, Any]] = []
    for _ in range(20 * s.num_samples):
        params = opt.ask(dists).params
        if params not in out:
            out.append(params)
        if len(out) == s.num_samples:
            return out
    raise StudyError(f"{study.source}: search.num_samples={s.num_samples}: the space holds only {len(out)} distinct "
                     f"configurations")


def fingerprint(study: Study) -> dict[str, Any]:
    """What the ladder was built for: a study directory's ladder of another search is refused."""
    s = study.search
    return {"space": {k: dict(v) for k, v in s.space.items()}, "sampler": s.sampler, "seed": s.seed,
            "num_samples": s.num_samples, "eta": s.eta, "rungs": list(rung_budgets(study)), "metric": s.metric,
            "mode": s.mode, "base": study.base_config().config_hash()}


def new_ladder(study: Study) -> dict[str, Any]:
    return {"version": LADDER_VERSION, "search": fingerprint(study), "configs": propose(study), "rungs": []}


def check_ladder(study: Study, ladder: dict[str, Any], where: str) -> None:
    if ladder.get("version") != LADDER_VERSION or ladder.get("search") != fingerprint(study):
        raise StudyError(f"{where}: holds the rung ladder of another halving search (its space, sampler, seed, "
                         f"eta, rungs, metric or base recipe differ; choose another --out)")


def trial_spec(study: Study, index: int, params: dict[str, Any], budget: int) -> TrialSpec:
    """Configuration ``index`` trained to ``budget``: a wsd trial like any (its identity is the config)."""
    from xtra.config import TrialConfig, model_config
    from xtra.overrides import override

    base = override(TrialConfig(model=model_config(study.size)), study.base)
    cfg = override(base, {**params, "pretrain.samples": budget, "seed": study.seeds[0]})
    shown = ",".join(f"{k.rsplit('.', 1)[-1]}={trial_id_value(v)}" for k, v in params.items())
    return TrialSpec(f"c{index}:{shown},samples={budget}", cfg, dict(params), study.seeds[0])


def value_of(row: dict[str, Any] | None, metric: str) -> float | None:
    v = (row or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(float(v)) else None


def promote(entries: list[dict[str, Any]], keep: int, mode: str) -> list[int]:
    """The ``keep`` best configurations of a rung; a failed or unscored one ranks last, ties by order."""
    def key(e: dict[str, Any]) -> tuple[int, float, int]:
        v = e["value"]
        if v is None:
            return (1, 0.0, e["config"])
        return (0, -v if mode == "max" else v, e["config"])

    return sorted(e["config"] for e in sorted(entries, key=key)[:keep])


def _branch_point(p: Any, budget: int) -> int:
    """Where a wsd run of ``budget`` samples under recipe ``p`` leaves its trunk (whatever p's own warmup)."""
    import dataclasses

    return dataclasses.replace(p, samples=budget, warmup_samples=0).branch_point()


def planned_samples(study: Study, configs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Samples (and GPU-hours) the halving search trains, against every configuration to the full budget:
    rung i trains n_i configurations from the previous rung's branch point to its own, plus a cooldown."""
    from xtra.costs import flops_per_image, gpu_hours

    configs = configs if configs is not None else propose(study)
    base_p = study.base_config().pretrain
    budgets, sizes = rung_budgets(study), rung_sizes(study)
    flops = [flops_per_image(trial_spec(study, i, c, budgets[-1]).config.model) for i, c in enumerate(configs)]
    mean_flops = sum(flops) / max(len(flops), 1)
    trained, previous = 0, 0
    for budget, n in zip(budgets, sizes, strict=True):
        trained += n * (budget - previous)
        previous = _branch_point(base_p, budget)
    grid = len(configs) * budgets[-1]
    return {"configurations": len(configs), "rungs": list(budgets), "per_rung": list(sizes),
            "trials": sum(sizes), "samples": trained, "grid_samples": grid,
            "gpu_hours": gpu_hours(mean_flops, trained),
            "grid_gpu_hours": sum(gpu_hours(f, budgets[-1]) for f in flops)}


def run_rungs(plan: Any, study_dir: Any, fit_rung: Any, replan: Any, *, display: Any, notes: list[str],
              stop: Any = None) -> tuple[str | None, bool]:
    """Run a halving search rung by rung: write the ladder (configurations, rungs decided so far), run the
    plan's rung as one Tune experiment (``fit_rung(plan) -> (name, finished)``), plan the next from the
    trials on disk (``replan()``: ``xtra.studies.plan.make_plan``, which imports this module, not the
    reverse). Stops when a rung is left unfinished (interrupted, stopped, a trial that crashed past its
    retries): ``xtra study resume`` continues that rung with its finished branches kept."""
    from xtra import studydir as st

    name, finished, ran = None, True, set()
    if plan.ladder is not None and not plan.ladder["rungs"]:
        cost = planned_samples(plan.study, plan.ladder["configs"])
        notes.append(f"halving: {cost['configurations']} configurations, {' -> '.join(map(str, cost['per_rung']))} "
                     f"trials over rungs of {' / '.join(f'{b:,}' for b in cost['rungs'])} samples: {cost['samples']:,} "
                     f"samples planned where the full grid trains {cost['grid_samples']:,}")
    while True:
        if plan.ladder is not None:
            st.write_ladder(study_dir, plan.ladder)  # before the rung runs: a resumed driver sees the same
        if plan.empty:
            break
        if plan.rung in ran:  # it ran and is still unfinished
            finished = False
            break
        ran.add(plan.rung)
        budget = rung_budgets(plan.study)[plan.rung]
        display.note(f"halving rung {plan.rung + 1} of {len(rung_budgets(plan.study))}: {len(plan.trials)} "
                     f"configuration(s) to {budget:,} samples ({len(plan.pending)} to run)")
        name, finished = fit_rung(plan)
        if not finished or (stop is not None and getattr(stop, "signal", None)):
            finished = False
            break
        plan = replan()
    if finished and plan.ladder is not None and plan.ladder["rungs"]:
        last = plan.ladder["rungs"][-1]
        if len(plan.ladder["rungs"]) == len(rung_budgets(plan.study)) and last["promoted"]:
            best = next(e for e in last["entries"] if e["config"] == last["promoted"][0])
            notes.append(f"halving: best configuration {best['trial_id']} ({plan.study.search.metric} "
                         f"{best['value']})")
    return name, finished
