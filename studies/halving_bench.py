"""Side by side, in one run: the full grid, Ray ASHA on training loss and the halving search.

The same 9 configurations (3 peak learning rates x 3 warmups, cpu-s under wsd on Fashion-MNIST, the
block-size study's cpu scale unless ``--samples`` says otherwise), the same probe, one study directory each,
run one after another on this machine::

    nice -n 5 .venv/bin/python -m xtra.studies.halving_bench --out runs/bench-halving

For each: samples trained (every trunk, branch and trial, read from the trial directories), wall time,
the configuration it picks, that configuration's linear top-1 in the full grid and its rank there.
Writes ``docs/bench-cpu-2core-halving.json`` and ``.md`` (``--docs`` to put them elsewhere).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

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


def study_toml(kind: str, sc: dict[str, Any], probe_train: int) -> str:
    """One study file of the comparison: ``grid`` (axes), ``asha`` (Optuna's grid sampler + ASHA on training
    loss; ``asha-short`` with a grace period of 1/32 of the budget) or ``halving``; everything else equal."""
    lrs, warmups = ", ".join(f"{x:g}" for x in LRS), ", ".join(str(w) for w in sc["warmups"])
    head = f'''name = "halving-bench-{kind}"
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


def finished_within(study_dir: Path, cap: int, full: int) -> list[str]:
    """The trials of an ASHA study that had finished their full budget (probe included) by the time the
    study had trained ``cap`` samples in all: what it would have picked had it been stopped at that count.
    Asynchronous ASHA decides each promotion on the results recorded so far, so its run up to that moment is
    the run a study capped there would have made. Times: each trial's start record plus its rows' wall_s."""
    events, finish = [], {}
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
    trained, moment = 0, None
    for when, samples, _ in sorted(events):
        if trained + samples > cap:
            moment = when
            break
        trained += samples
    return sorted(name for name, when in finish.items() if moment is None or when <= moment)


def _key(params: dict[str, Any]) -> tuple[float, int]:
    return float(params["pretrain.lr"]), int(params["pretrain.warmup_samples"])


def run(out: Path, samples: int, probe_train: int) -> dict[str, Any]:
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
        df = pl.read_parquet(outcome.study_dir / st.RESULTS)
        trained = samples_trained(outcome.study_dir)
        full = df.filter((pl.col("status") == "finished") & (pl.col("samples_seen") == samples))
        finished = {_key({"pretrain.lr": r["pretrain.lr"], "pretrain.warmup_samples": r["pretrain.warmup_samples"]}):
                    r["linear_top1"] for r in full.to_dicts()}
        entry: dict[str, Any] = {"wall_s": round(wall, 1), "samples_trained": sum(trained.values()),
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
    for kind in (k for k in KINDS if k.startswith("asha")):  # stopped at halving's samples: its best finished
        names = finished_within(out / kind, measured["halving"]["samples_trained"], samples)
        keys = [_key(td.read_json(out / kind / st.TRIALS / n / td.PARAMS)["params"]) for n in names]
        finished = [k for k in keys if k in tops[kind]]
        capped = max(finished, key=lambda k: tops[kind][k]) if finished else None
        measured[kind]["pick_at_halving_samples"] = None if capped is None else {
            "pretrain.lr": capped[0], "pretrain.warmup_samples": capped[1], "grid_top1": grid[capped]}
    for entry in measured.values():
        pick = entry["pick"]
        entry["pick"] = None if pick is None else {"pretrain.lr": pick[0], "pretrain.warmup_samples": pick[1]}
        if pick is not None:
            entry["pick_grid_top1"] = grid[pick]
            entry["pick_rank_in_grid"] = ranked.index(pick) + 1
            entry["points_below_grid_best"] = round(100 * (best - grid[pick]), 2)
        entry["samples_vs_grid"] = round(entry["samples_trained"] / measured["grid"]["samples_trained"], 3)
        entry["wall_vs_grid"] = round(entry["wall_s"] / measured["grid"]["wall_s"], 3)
    return {"scale": sc, "probe_train": probe_train, "configurations": len(grid), "grid_best_top1": best,
            "machine": {"host": platform.node(), "python": platform.python_version(),
                        "cpus": __import__("os").cpu_count()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": measured}


def markdown(doc: dict[str, Any], command: str) -> str:
    sc, res = doc["scale"], doc["results"]
    lines = ["# Halving search vs full grid vs ASHA on training loss (CPU, 2 cores)", "",
             f"Reproduce: `{command}`", "",
             f"{doc['configurations']} configurations: peak lr {', '.join(f'{x:g}' for x in LRS)} x warmup "
             f"{', '.join(f'{w:,}' for w in sc['warmups'])} samples; cpu-s (k = 2) on Fashion-MNIST, wsd (20% 1-sqrt "
             f"cooldown), batch {BATCH}, full budget {sc['samples']:,} samples; linear probe (L-BFGS) on a "
             f"{doc['probe_train']:,}-image train subset at the end of each completed budget. Halving: eta 3, rungs "
             f"{' / '.join(f'{r:,}' for r in sc['rungs'])} samples, ranked on linear top-1. ASHA: Ray's "
             f"ASHAScheduler on training loss at samples milestones (reduction 2; grace 1/8 of the budget, "
             f"asha-short 1/{SHORT_GRACE}), Optuna's grid sampler over the same 9 points. One run, one after "
             f"another, {doc['date']}.", "",
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
    args = parser.parse_args(argv)
    doc = run(args.out.resolve(), args.samples, args.probe_train)
    command = ("nice -n 5 .venv/bin/python -m xtra.studies.halving_bench --out " + str(args.out)
               + (f" --samples {args.samples}" if args.samples != 30000 else "")
               + (f" --probe-train {args.probe_train}" if args.probe_train != 20000 else ""))
    doc["command"] = command
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "bench-cpu-2core-halving.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (args.docs / "bench-cpu-2core-halving.md").write_text(markdown(doc, command))
    print(markdown(doc, command))


if __name__ == "__main__":
    main()
