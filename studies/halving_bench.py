"""Side by side, in one run: the full grid, Ray ASHA on training loss and the halving search.

The same 9 configurations (3 peak learning rates x 3 warmups, cpu-s under wsd on Fashion-MNIST, the
block-size study's cpu scale unless ``--samples`` says otherwise), the same probe, one study directory each,
run one after another on this machine::

    nice -n 5 .venv/bin/python -m xtra.studies.halving_bench --out runs/bench-halving

For each: samples trained (every trunk, branch and trial, read from the trial directories), wall time,
the configuration it picks, that configuration's linear top-1 in the full grid and its rank there.
Writes ``docs/bench-cpu-2core-halving.json`` and ``.md`` (``--docs`` to put them elsewhere). A study
directory already finished in ``--out`` is reused (its wall time then read from its runs.json).

ASHA's pick at halving's sample count depends on the order Optuna's grid sampler proposes the
configurations (its seed, `grid_order`); halving's does not. ``--asha-orders N`` also runs the asha
study under grid-sampler seeds 1..N, each in ``--out/asha-seed<n>``, stopped once it has trained
halving's samples (`stop_at_cap`), and reads each one's pick there (`pick_within`)::

    nice -n 5 .venv/bin/python -m xtra.studies.halving_bench --out runs/bench-halving --asha-orders 7
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from xtra import studydir as st
from xtra import trialdir as td

LRS = (3e-4, 1e-3, 3e-3)
BATCH = 128
# the searches, in the order they run; "asha-short" is ASHA with a grace period 4x shorter (1/32 of the
# budget), meant to stop more (at 30,000 samples it still trained 1.7x halving's samples: asynchronous
# promotion), so the comparison at equal samples reads each ASHA run at halving's count (finished_within)
KINDS = ("halving", "asha", "asha-short", "grid")
SHORT_GRACE = 32


def scale(samples: int) -> dict[str, Any]:
    """Warmups and rungs for a full budget: warmups 0, 1/30 and 1/12 of it, rungs at 1/8, 1/3 and all of it
    (for 30,000 samples: warmups 0 / 1,000 / 2,500, rungs 3,750 / 10,000 / 30,000; eta 3: 9 -> 3 -> 1)."""
    rungs = [samples // 8, samples // 3, samples]  # a branch point is a whole number of batches anyway
    return {"samples": samples, "warmups": [0, round(samples / 30), round(samples / 12)], "rungs": rungs}


def study_toml(kind: str, sc: dict[str, Any], probe_train: int, search_seed: int | None = None) -> str:
    """One study file of the comparison: ``grid`` (axes), ``asha`` (Optuna's grid sampler + ASHA on training
    loss; ``asha-short`` with a grace period of 1/32 of the budget) or ``halving``; everything else equal.
    ``search_seed`` (``asha`` only): ``[search] seed``, the seed of Optuna's grid sampler, i.e. another order
    of proposing the 9 configurations (`grid_order`); the study is named ``halving-bench-asha-seed<n>``."""
    if search_seed is not None and kind != "asha":
        raise ValueError(f"{kind}: only the asha study takes another proposal order")
    lrs, warmups = ", ".join(f"{x:g}" for x in LRS), ", ".join(str(w) for w in sc["warmups"])
    name = kind if search_seed is None else f"{kind}-seed{search_seed}"
    head = f'''name = "halving-bench-{name}"
description = "halving bench: {kind}"
size = "cpu-s"
seeds = 1

[base]
"data.name" = "fashion-mnist"
"model.block_size" = 2
"pretrain.samples" = {sc["samples"]}
"pretrain.batch_size" = {BATCH}
"pretrain.schedule" = "wsd"
"pretrain.warmup_samples" = 0  # every configuration sets its own
"pretrain.checkpoint_every" = {sc["samples"]}
"probe.kinds" = ["linear"]
"probe.points" = 1
"probe.limit_train" = {probe_train}
"probe.linear_solver" = "lbfgs"
"probe.linear_l2" = [1e-8, 1e-7, 1e-6]
"probe.linear_max_iter" = 200
"probe.feature_dtype" = "bfloat16"

[resources]
cpus_per_trial = 1
loggers = []
'''
    if kind == "grid":
        return head + f'''
[axes]
"pretrain.lr" = [{lrs}]
"pretrain.warmup_samples" = [{warmups}]
'''
    space = f'''
[search.space]
"pretrain.lr" = {{ type = "choice", values = [{lrs}] }}
"pretrain.warmup_samples" = {{ type = "choice", values = [{warmups}] }}
'''
    if kind in ("asha", "asha-short"):
        grace = f"grace_samples = {sc['samples'] // SHORT_GRACE}\n" if kind == "asha-short" else ""
        grace += f"seed = {search_seed}\n" if search_seed is not None else ""
        return head + '''
[search]
kind = "optuna"
sampler = "grid"
metric = "linear_top1"
asha = true
''' + grace + space
    return head + f'''
[search]
kind = "halving"
sampler = "grid"
metric = "linear_top1"
eta = 3
rungs = [{", ".join(map(str, sc["rungs"]))}]
''' + space


def samples_trained(study_dir: Path) -> dict[str, int]:
    """Samples each trial directory trained: a branch from its start, a trunk (continued or not) and a
    standalone trial from zero, a trial ASHA stopped up to its last logged step."""
    out = {}
    for run in td.trial_dirs(study_dir):
        row = td.read_json(run / td.RESULT)
        if isinstance(row, dict) and row.get("status") == td.FINISHED:
            n = row.get("samples_trained")
            out[run.name] = int(n if n is not None else row.get("samples_seen") or 0)
        else:
            rows = td.read_jsonl(run / td.METRICS)
            out[run.name] = max((int(r.get("samples_seen") or 0) for r in rows), default=0)
    return out


class AtCap(NamedTuple):
    """A study read at the moment it had trained ``cap`` samples in all (`at_cap`)."""

    finished: list[str]  # trials that had finished their full budget, probe included (`finished_within`)
    trained: dict[str, int]  # samples each trial directory had logged, at most ``cap`` together
    stopped: list[str]  # trials ASHA had stopped (a ``stopped`` attempt record)


def finished_within(study_dir: Path, cap: int, full: int) -> list[str]:
    """The trials of an ASHA study that had finished their full budget (probe included) by the time the
    study had trained ``cap`` samples in all: what it would have picked had it been stopped at that count.
    Asynchronous ASHA decides each promotion on the results recorded so far, so its run up to that moment is
    the run a study capped there would have made."""
    return at_cap(study_dir, cap, full).finished


def at_cap(study_dir: Path, cap: int, full: int) -> AtCap:
    """The study at the moment it passed ``cap`` samples in all (the end, if it never did), from its trial
    directories. Times: each trial's start record plus its rows' wall_s; trained: the windows logged before
    that moment."""
    events, finish, stopped = [], {}, {}
    for run in td.trial_dirs(study_dir):
        records = td.read_jsonl(run / td.ATTEMPTS)
        starts = [r for r in records if r.get("event") == "start"]
        if not starts:
            continue
        t0 = datetime.strptime(starts[0]["time"], "%Y-%m-%d %H:%M:%S")
        seen_before = 0
        for row in td.read_jsonl(run / td.METRICS):
            if "samples_seen" in row and "wall_s" in row:
                events.append((t0 + timedelta(seconds=row["wall_s"]), row["samples_seen"] - seen_before, run.name))
                seen_before = row["samples_seen"]
        ended = [r for r in records if r.get("event") == "finish"]
        if seen_before == full and ended:
            finish[run.name] = datetime.strptime(ended[-1]["time"], "%Y-%m-%d %H:%M:%S")
        asha = [r for r in records if r.get("event") == "stopped"]
        if asha:
            stopped[run.name] = datetime.strptime(asha[-1]["time"], "%Y-%m-%d %H:%M:%S")
    trained, moment, per = 0, None, {r.name: 0 for r in td.trial_dirs(study_dir)}
    for when, samples, name in sorted(events):
        if trained + samples > cap:
            moment = when
            break
        trained += samples
        per[name] += samples
    return AtCap(sorted(name for name, when in finish.items() if moment is None or when <= moment), per,
                 sorted(name for name, when in stopped.items() if moment is None or when <= moment))


def _key(params: dict[str, Any]) -> tuple[float, int]:
    return float(params["pretrain.lr"]), int(params["pretrain.warmup_samples"])


def pick_within(study_dir: Path, cap: int, full: int, top1: dict[tuple[float, int], float]) -> tuple[float, int] | None:
    """What the search would have picked had it been stopped at ``cap`` samples: of the configurations that
    had finished their full budget by then (`finished_within`), the best on its own ``top1`` (the study's
    full-budget linear top-1 per configuration); None when none had."""
    names = finished_within(study_dir, cap, full)
    keys = [_key(td.read_json(Path(study_dir) / st.TRIALS / n / td.PARAMS)["params"]) for n in names]
    finished = [k for k in keys if k in top1]
    return max(finished, key=lambda k: top1[k]) if finished else None


def grid_order(seed: int, lrs: tuple[float, ...], warmups: list[int]) -> list[tuple[float, int]]:
    """The order in which Optuna's grid sampler, built as xtra's tuner builds it (``GridSampler`` over
    ``params/<key>`` with ``seed = [search] seed``, studies/ray/tuner.py), proposes the configurations: asked
    of a real in-memory Optuna study. Optuna (5.x) shuffles the grid once with the seed (0 when None) and
    gives trial n the n-th point of it, so the seed alone fixes the order; which trials finish first does not."""
    import optuna

    space = {"params/pretrain.lr": list(lrs), "params/pretrain.warmup_samples": list(warmups)}
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(sampler=optuna.samplers.GridSampler(space, seed=seed))
        order = []
        for _ in range(len(lrs) * len(warmups)):
            trial = study.ask()
            order.append((float(trial.suggest_categorical("params/pretrain.lr", space["params/pretrain.lr"])),
                          int(trial.suggest_categorical("params/pretrain.warmup_samples",
                                                        space["params/pretrain.warmup_samples"]))))
            # left running, as Ray's searcher leaves the trials it has asked for while they train (telling
            # the last point ends the study, which Optuna allows only inside an objective)
    finally:
        optuna.logging.set_verbosity(level)
    return order


def proposed_order(study_dir: Path, name: str) -> list[tuple[float, int]]:
    """The configurations an Optuna search proposed, in the order of its trials (its ``optuna.db``)."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{Path(study_dir) / st.OPTUNA_DB}")
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    finally:
        optuna.logging.set_verbosity(level)
    return [(float(t.params["params/pretrain.lr"]), int(t.params["params/pretrain.warmup_samples"]))
            for t in trials if "params/pretrain.lr" in t.params]


def over_cap(study_dir: Path, cap: int) -> bool:
    """Whether the study has trained more than ``cap`` samples in all (`samples_trained`: running trials up
    to their last logged step): past the moment `finished_within` reads it at, so its pick there is decided."""
    return sum(samples_trained(study_dir).values()) > cap


@contextlib.contextmanager
def stop_at_cap(study_dir: Path, cap: int, every_s: float = 2.0) -> Iterator[dict[str, Any]]:
    """Around a study run in this process (``run_study``): once the study has trained more than ``cap``
    samples (`over_cap`), one SIGTERM to this process, the stop a preemption or scancel gives a study
    (``xtra.studies.slurm.stop_on_signals``): no new trials, the running ones checkpoint where they are,
    the run ends as stopped (``xtra study resume`` would continue it). Yields what it did: ``at`` (time)
    and ``samples`` (the study's count when it fired), both None if it never fired."""
    fired: dict[str, Any] = {"at": None, "samples": None}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(every_s):
            try:
                n = sum(samples_trained(study_dir).values())
            except (OSError, ValueError, TypeError):  # a file being written: read it again next time
                continue
            if n > cap and not done.is_set():  # not once the run is over (its signal handler gone)
                fired.update(at=time.strftime("%Y-%m-%d %H:%M:%S"), samples=n)
                os.kill(os.getpid(), signal.SIGTERM)
                return

    watcher = threading.Thread(target=watch, name="halving-bench-cap", daemon=True)
    watcher.start()
    try:
        yield fired
    finally:
        done.set()
        watcher.join()


def recorded_wall(study_dir: Path) -> float:
    """Wall seconds of the study's Tune runs, from its ``runs.json`` (started to ended of each run): the
    wall of a study this bench reuses rather than runs."""
    fmt, total = "%Y-%m-%d %H:%M:%S", 0.0
    for r in st.read_runs(study_dir):
        if r.get("started") and r.get("ended"):
            total += (datetime.strptime(r["ended"], fmt) - datetime.strptime(r["started"], fmt)).total_seconds()
    return total


def _full_budget_rows(df, samples: int):
    """The rows of a study's results table finished at the full budget."""
    import polars as pl

    return df.filter((pl.col("status") == "finished") & (pl.col("samples_seen") == samples))


def _top1_by_config(full) -> dict[tuple[float, int], float]:
    return {_key({"pretrain.lr": r["pretrain.lr"], "pretrain.warmup_samples": r["pretrain.warmup_samples"]}):
            r["linear_top1"] for r in full.to_dicts()}


def full_budget_top1(study_dir: Path, samples: int) -> dict[tuple[float, int], float]:
    """(lr, warmup) -> linear top-1 of each configuration the study finished at the full budget."""
    import polars as pl

    return _top1_by_config(_full_budget_rows(pl.read_parquet(Path(study_dir) / st.RESULTS), samples))


def capped_asha(out: Path, sc: dict[str, Any], probe_train: int, seed: int, cap: int) -> dict[str, Any]:
    """The asha study (grace 1/8) under grid-sampler seed ``seed``, in ``out/asha-seed<seed>``, stopped once
    it has trained more than ``cap`` samples (`stop_at_cap`) rather than run to its end; a directory already
    past the cap is read, not resumed. Its pick at ``cap`` is `pick_within`'s: the trials that had finished
    (probe included) when the study had trained ``cap`` samples; trials still running then do not count.
    What the stop did (signal, time, the study's samples when it fired) is kept in ``out/asha-seed<seed>.stop.json``
    for the runs that read the directory later."""
    from xtra.studies.load import load_study
    from xtra.studies.runner import run_study

    kind = f"asha-seed{seed}"
    path, study_dir, record = out / f"{kind}.toml", out / kind, out / f"{kind}.stop.json"
    path.write_text(study_toml("asha", sc, probe_train, seed))
    entry: dict[str, Any] = {"search_seed": seed, "study_dir": kind}
    if study_dir.is_dir() and over_cap(study_dir, cap):
        entry.update(ran=False, stop=td.read_json(record))
    else:
        with stop_at_cap(study_dir, cap) as fired:
            outcome = run_study(load_study(path), study_dir, build_report=False)
        stop = {"signal": outcome.stopped, **fired}
        td.write_json(record, stop)
        entry.update(ran=True, stop=stop, notes=outcome.notes)
        if not over_cap(study_dir, cap) and not outcome.complete:
            raise SystemExit(f"{kind}: stopped before it trained {cap:,} samples ({outcome.counts}); rerun to "
                             f"resume it")
    top1 = full_budget_top1(study_dir, sc["samples"])
    proposed = proposed_order(study_dir, f"halving-bench-{kind}")
    planned = grid_order(seed, LRS, sc["warmups"])
    if proposed != planned[:len(proposed)]:
        raise SystemExit(f"{kind}: proposed {proposed}, not the start of grid_order's {planned}")
    runs = st.read_runs(study_dir)
    entry.update(wall_s=round(recorded_wall(study_dir), 1), run_state=runs[-1].get("state") if runs else None,
                 proposed=proposed, grid_order=planned,
                 full_budget_top1={f"lr={k[0]:g},warmup={k[1]}": v for k, v in top1.items()},
                 pick=pick_within(study_dir, cap, sc["samples"], top1),
                 **trained_by_proposal(study_dir, proposed, cap, sc["samples"]))
    return entry


def trained_by_proposal(study_dir: Path, proposed: list[tuple[float, int]], cap: int, full: int) -> dict[str, Any]:
    """Samples trained in all (to the run's end or stop), and per configuration in the order proposed: how far
    each had got when the study passed ``cap`` samples (a proposal started after that trained nothing by
    then), whether it had finished its full budget, probe included, and whether ASHA had stopped it by
    then (`at_cap`)."""
    trained = samples_trained(study_dir)
    finished, upto, stopped = at_cap(study_dir, cap, full)
    per = {_key(td.read_json(run / td.PARAMS)["params"]): {"samples_at_cap": upto.get(run.name, 0),
                                                          "finished_at_cap": run.name in finished,
                                                          "asha_stopped_at_cap": run.name in stopped}
           for run in td.trial_dirs(study_dir)}
    never = {"samples_at_cap": 0, "finished_at_cap": False, "asha_stopped_at_cap": False}
    return {"samples_trained": sum(trained.values()), "trial_dirs": len(trained),
            "by_proposal": [{"pretrain.lr": k[0], "pretrain.warmup_samples": k[1], **per.get(k, never)}
                            for k in proposed]}


def run(out: Path, samples: int, probe_train: int, asha_orders: int = 0) -> dict[str, Any]:
    """The four studies (a finished study directory is reused: its wall time is then its runs.json's), then
    ``asha_orders`` more asha studies under grid-sampler seeds 1..n, each stopped at halving's samples."""
    import polars as pl

    from xtra.studies.load import load_study
    from xtra.studies.runner import run_study

    out.mkdir(parents=True, exist_ok=True)
    sc = scale(samples)
    measured: dict[str, Any] = {}
    tops: dict[str, dict[tuple[float, int], float]] = {}
    for kind in KINDS:
        path = out / f"{kind}.toml"
        path.write_text(study_toml(kind, sc, probe_train))
        study = load_study(path)
        t0 = time.perf_counter()
        outcome = run_study(study, out / kind, build_report=False)
        wall = time.perf_counter() - t0
        if outcome.stopped or outcome.counts.get("finished", 0) == 0:
            raise SystemExit(f"{kind}: the study did not finish ({outcome.counts}); rerun to resume it")
        reused = outcome.experiment is None  # nothing left to run: the wall of the runs that trained it
        if reused:
            wall = recorded_wall(outcome.study_dir)
        df = pl.read_parquet(outcome.study_dir / st.RESULTS)
        trained = samples_trained(outcome.study_dir)
        full = _full_budget_rows(df, samples)
        finished = _top1_by_config(full)
        entry: dict[str, Any] = {"wall_s": round(wall, 1), "wall_from": st.RUNS if reused else "this run",
                                 "samples_trained": sum(trained.values()),
                                 "trial_dirs": len(trained), "trials": df.height, "full_budget_trials": full.height,
                                 "notes": outcome.notes, "full_budget_top1": {f"lr={k[0]:g},warmup={k[1]}": v
                                                                              for k, v in finished.items()}}
        if kind == "halving":
            ladder = st.read_ladder(outcome.study_dir)
            [winner] = ladder["rungs"][-1]["promoted"]
            entry["pick"] = _key(ladder["configs"][winner])
            entry["ladder"] = [{"samples": r["samples"], "promoted": r["promoted"],
                                "values": {str(e["config"]): e["value"] for e in r["entries"]}}
                               for r in ladder["rungs"]]
            entry["configs"] = ladder["configs"]
        else:  # what a user of the search keeps: the best finished (full-budget) configuration
            entry["pick"] = max(finished, key=lambda k: finished[k]) if finished else None
        measured[kind], tops[kind] = entry, finished
    grid = tops["grid"]  # (lr, warmup) -> linear top-1 of every configuration at the full budget
    ranked = sorted(grid, key=lambda k: -grid[k])
    best = grid[ranked[0]]
    cap = measured["halving"]["samples_trained"]
    for kind in (k for k in KINDS if k.startswith("asha")):  # stopped at halving's samples: its best finished
        capped = pick_within(out / kind, cap, samples, tops[kind])
        measured[kind]["pick_at_halving_samples"] = None if capped is None else {
            "pretrain.lr": capped[0], "pretrain.warmup_samples": capped[1], "grid_top1": grid[capped],
            "rank_in_grid": ranked.index(capped) + 1}
        measured[kind]["proposed"] = proposed_order(out / kind, f"halving-bench-{kind}")
    halving_pick = measured["halving"]["pick"]
    orders = [{"search_seed": 0, "study_dir": "asha", "note": "the asha study above: ran to its end, read at the cap",
               "wall_s": measured["asha"]["wall_s"], "proposed": measured["asha"]["proposed"],
               "grid_order": grid_order(0, LRS, sc["warmups"]),
               "pick": pick_within(out / "asha", cap, samples, tops["asha"]),
               **trained_by_proposal(out / "asha", measured["asha"]["proposed"], cap, samples)}]
    orders += [capped_asha(out, sc, probe_train, seed, cap) for seed in range(1, asha_orders + 1)]
    for o in orders:
        pick = o.pop("pick")
        o["pick_at_halving_samples"] = None if pick is None else {
            "pretrain.lr": pick[0], "pretrain.warmup_samples": pick[1], "grid_top1": grid[pick],
            "rank_in_grid": ranked.index(pick) + 1}
        # nothing finished by then: no pick to be worse than, so halving's counts as at least as good
        o["halving_at_least_as_good"] = pick is None or grid[halving_pick] >= grid[pick]
    for entry in measured.values():
        pick = entry["pick"]
        entry["pick"] = None if pick is None else {"pretrain.lr": pick[0], "pretrain.warmup_samples": pick[1]}
        if pick is not None:
            entry["pick_grid_top1"] = grid[pick]
            entry["pick_rank_in_grid"] = ranked.index(pick) + 1
            entry["points_below_grid_best"] = round(100 * (best - grid[pick]), 2)
        entry["samples_vs_grid"] = round(entry["samples_trained"] / measured["grid"]["samples_trained"], 3)
        entry["wall_vs_grid"] = round(entry["wall_s"] / measured["grid"]["wall_s"], 3)
    h = measured["halving"]
    return {"scale": sc, "probe_train": probe_train, "configurations": len(grid), "grid_best_top1": best,
            "grid_ranking": [{"pretrain.lr": k[0], "pretrain.warmup_samples": k[1]} for k in ranked],
            "machine": {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": measured,
            "asha_orders": {"cap_samples": cap, "orders": orders,
                            "halving_pick": {**h["pick"], "grid_top1": h["pick_grid_top1"],
                                             "rank_in_grid": h["pick_rank_in_grid"]},
                            "halving_at_least_as_good": sum(o["halving_at_least_as_good"] for o in orders)}}


def _conf(c: dict[str, Any] | tuple[float, int]) -> str:
    lr, wu = (c["pretrain.lr"], c["pretrain.warmup_samples"]) if isinstance(c, dict) else c
    return f"lr {lr:g} / wu {wu:,}"


def orders_markdown(doc: dict[str, Any]) -> list[str]:
    """The table of ASHA's picks at halving's samples, one row per proposal order (grid-sampler seed)."""
    a, n = doc["asha_orders"], doc["configurations"]
    h = a["halving_pick"]
    lines = [f"ASHA (grace 1/8) under {len(a['orders'])} proposal orders (the grid sampler's `search.seed`), each "
             f"read at halving's {a['cap_samples']:,} samples (`finished_within`: the configurations that had "
             f"finished their full budget, probe included, by then; the best of them on the run's own top-1). "
             f"Seed 0 is the asha study of the four searches below, run to its end; seeds 1 and up were stopped "
             f"(SIGTERM) once they had trained more than {a['cap_samples']:,}. Halving picks {_conf(h)}: "
             f"{100 * h['grid_top1']:.2f}%, rank {h['rank_in_grid']} of {n} in the grid.", "",
             "| seed | proposed in this order: samples each had trained at halving's count (F: finished, probed; "
             "S: stopped by ASHA) "
             "| samples trained to the end or stop (the stop: at the study's count then) "
             "| ASHA's pick at halving's samples | its grid top-1 | rank "
             "| halving at least as good |",
             "|---|---|---|---|---|---|---|"]
    for o in a["orders"]:
        p = o["pick_at_halving_samples"]
        trained = "; ".join(f"{_conf(c)}: {c['samples_at_cap']:,}{' F' if c['finished_at_cap'] else ''}"
                            f"{' S' if c['asha_stopped_at_cap'] else ''}"
                            for c in o["by_proposal"] if c["samples_at_cap"])
        shown = ("nothing finished | – | –" if p is None else
                 f"{_conf(p)} | {100 * p['grid_top1']:.2f}% | {p['rank_in_grid']} of {n}")
        stop = o.get("stop") or {}
        how = f" ({stop['signal']} at {stop['samples']:,})" if stop.get("signal") and stop.get("samples") else ""
        lines.append(f"| {o['search_seed']} | {trained} | {o['samples_trained']:,}{how} | {shown} | "
                     f"{'yes' if o['halving_at_least_as_good'] else 'no'} |")
    lines += ["", f"Halving's pick is at least as good as ASHA's at equal samples under "
                  f"{a['halving_at_least_as_good']} of {len(a['orders'])} proposal orders."]
    return lines


def markdown(doc: dict[str, Any], command: str) -> str:
    sc, res = doc["scale"], doc["results"]
    reused = [k for k in KINDS if res.get(k, {}).get("wall_from") == st.RUNS]
    lines = ["# Halving search vs full grid vs ASHA on training loss (CPU, 2 cores)", "",
             f"Reproduce: `{command}`", "",
             f"{doc['configurations']} configurations: peak lr {', '.join(f'{x:g}' for x in LRS)} x warmup "
             f"{', '.join(f'{w:,}' for w in sc['warmups'])} samples; cpu-s (k = 2) on Fashion-MNIST, wsd (20% 1-sqrt "
             f"cooldown), batch {BATCH}, full budget {sc['samples']:,} samples; linear probe (L-BFGS) on a "
             f"{doc['probe_train']:,}-image train subset at the end of each completed budget. Halving: eta 3, rungs "
             f"{' / '.join(f'{r:,}' for r in sc['rungs'])} samples, ranked on linear top-1. ASHA: Ray's "
             f"ASHAScheduler on training loss at samples milestones (reduction 2; grace 1/8 of the budget, "
             f"asha-short 1/{SHORT_GRACE}), Optuna's grid sampler over the same 9 points. One run, one after "
             f"another" + (f", {doc['date']}." if not reused else
                           f"; read {doc['date']} from the study directories, where {', '.join(reused)} had "
                           f"finished before: reused, not rerun, wall time from their runs.json (each Tune "
                           f"run's start to end)."), "",
             *(["## ASHA at halving's sample count, over proposal orders", "", *orders_markdown(doc), "",
                "## The four searches", ""] if doc.get("asha_orders") else []),
             "| search | samples trained | vs grid | wall | vs grid | picks | its linear top-1 (grid) | rank in grid |"
             " below grid best |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind in ("grid", *(k for k in KINDS if k != "grid" and k in res)):
        e = res[kind]
        pick = e.get("pick")
        shown = "–" if pick is None else f"lr {pick['pretrain.lr']:g}, warmup {pick['pretrain.warmup_samples']:,}"
        top1 = f"{100 * e['pick_grid_top1']:.2f}%" if pick else "–"
        lines.append(f"| {kind} | {e['samples_trained']:,} | {e['samples_vs_grid']:.2f}x | {e['wall_s'] / 60:.1f} min "
                     f"| {e['wall_vs_grid']:.2f}x | {shown} | {top1} | {e.get('pick_rank_in_grid', '–')} of "
                     f"{doc['configurations']} | {e.get('points_below_grid_best', '–')} points |")
    for kind in (k for k in KINDS if k.startswith("asha") and k in res):
        capped = res[kind].get("pick_at_halving_samples")
        shown = "nothing finished yet" if capped is None else (
            f"lr {capped['pretrain.lr']:g}, warmup {capped['pretrain.warmup_samples']:,} "
            f"({100 * capped['grid_top1']:.2f}%)")
        lines.append(f"\nStopped at halving's {res['halving']['samples_trained']:,} samples, {kind} would have "
                     f"picked: {shown} (from its own records: the trials that had finished by then).")
    lines += ["", "The full grid's linear top-1 per configuration:", "", "| configuration | linear top-1 |",
              "|---|---|"]
    for k, v in sorted(res["grid"]["full_budget_top1"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {100 * v:.2f}% |")
    h = res["halving"]
    lines += ["", "The halving ladder (linear top-1 of each completed budget; promoted configurations in bold):", ""]
    for rung in h["ladder"]:
        cells = []
        for i, v in rung["values"].items():
            c = h["configs"][int(i)]
            shown = "–" if v is None else f"{100 * v:.2f}"
            text = f"lr {c['pretrain.lr']:g}/wu {c['pretrain.warmup_samples']}: {shown}"
            cells.append(f"**{text}**" if int(i) in rung["promoted"] else text)
        lines.append(f"- {rung['samples']:,} samples: " + "; ".join(cells))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-halving"))
    parser.add_argument("--samples", type=int, default=30000, help="the full budget (the block-size study's: 30000)")
    parser.add_argument("--probe-train", type=int, default=20000, help="images the linear probe trains on")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--asha-orders", type=int, default=0, metavar="N",
                        help="also run the asha study under grid-sampler seeds 1..N (other proposal orders), each "
                             "stopped once it has trained halving's samples, and read each one's pick there")
    args = parser.parse_args(argv)
    doc = run(args.out.resolve(), args.samples, args.probe_train, args.asha_orders)
    command = ("nice -n 5 .venv/bin/python -m xtra.studies.halving_bench --out " + str(args.out)
               + (f" --samples {args.samples}" if args.samples != 30000 else "")
               + (f" --probe-train {args.probe_train}" if args.probe_train != 20000 else "")
               + (f" --asha-orders {args.asha_orders}" if args.asha_orders else ""))
    doc["command"] = command
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "bench-cpu-2core-halving.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (args.docs / "bench-cpu-2core-halving.md").write_text(markdown(doc, command))
    print(markdown(doc, command))


if __name__ == "__main__":
    main()
