"""What a fault campaign (`xtra.studies.fault_campaign`) checks after each study: every planned trial
finished exactly once (attempts.jsonl: none lost, none finished twice, none left running), its results,
metrics, probe files and checkpoints equal to an uninterrupted run of the same study (timings aside:
they are the only fields a rerun may change), results.parquet, optuna.db and the report consistent with
the trial directories, and the work each fault cost (samples retrained).

A search's resumed driver draws new points (its sampler's seed moves on with the trials the study holds),
so a searched trial with no counterpart in the uninterrupted run is held against that config trained
alone here (`run_trial`, one thread like a Ray trial): the reference the campaign reconstructs.

A halving search's rung ladder (halving.json: the configurations, and per rung each trial's metric and
the promoted) must equal the uninterrupted run's (`ladder_differences`): a resume that re-decided a rung
differently, lost a trial's value or promoted other configurations shows there, before any trial does.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from xtra import studydir as st
from xtra import trialdir as td

# Fields that measure the machine, not the model: the only ones a rerun or a resume may change.
TIMING_KEYS = {"wall_s", "pretrain_wall_s", "images_per_s", "data_stall", "time", "seconds", "probe_s",
               "encode_s", "fit_s"}


def science(obj: Any) -> Any:
    """`obj` without its timings (keys in TIMING_KEYS or ending in `_s` / `per_s`)."""
    if isinstance(obj, dict):
        return {k: science(v) for k, v in obj.items()
                if k not in TIMING_KEYS and not k.endswith(("_s", "per_s", "_seconds"))}
    if isinstance(obj, list):
        return [science(v) for v in obj]
    return obj


def _tensors_equal(a: Any, b: Any, where: str, diffs: list[str]) -> None:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and torch.equal(a, b)):
            diffs.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            diffs.append(f"{where}: keys {sorted(set(a) ^ set(b), key=str)[:4]}")
        for k in set(a) & set(b):
            _tensors_equal(a[k], b[k], f"{where}.{k}", diffs)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            diffs.append(f"{where}: length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _tensors_equal(x, y, f"{where}[{i}]", diffs)
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and a != a and b != b):
        diffs.append(f"{where}: {a!r} vs {b!r}")


def _checkpoint(path: Path) -> dict[str, Any]:
    import torch

    ckpt = torch.load(path, weights_only=False, map_location="cpu")
    return {k: ckpt.get(k) for k in ("model", "optimizer", "step", "samples_seen", "rng", "data", "final")}


def trial_differences(mine: Path, ref: Path) -> list[str]:
    """Where trial directory `mine` differs from `ref` in what it trained and measured."""
    diffs: list[str] = []
    a, b = td.read_result(mine), td.read_result(ref)
    if science(a) != science(b):
        keys = sorted(k for k in set(science(a) or {}) | set(science(b) or {})
                      if (science(a) or {}).get(k) != (science(b) or {}).get(k))
        diffs.append(f"{td.RESULT}: {keys}")
    if science(td.read_metrics(mine)) != science(td.read_metrics(ref)):
        diffs.append(td.METRICS)
    probes = sorted(p.name for p in (ref / td.PROBES).glob("*.json"))
    if sorted(p.name for p in (mine / td.PROBES).glob("*.json")) != probes:
        diffs.append(f"{td.PROBES}/: other files")
    for name in probes:
        if science(td.read_json(mine / td.PROBES / name)) != science(td.read_json(ref / td.PROBES / name)):
            diffs.append(f"{td.PROBES}/{name}")
    for name in (td.PROBE, td.PROBE_RANDOM):
        if (ref / name).is_file() and science(td.read_json(mine / name)) != science(td.read_json(ref / name)):
            diffs.append(name)
    kept = sorted(p.name for p in (ref / td.CHECKPOINTS).glob("*"))
    if sorted(p.name for p in (mine / td.CHECKPOINTS).glob("*")) != kept:
        diffs.append(f"{td.CHECKPOINTS}/: other files")
    for rel in [td.CHECKPOINT, *(f"{td.CHECKPOINTS}/{k}" for k in kept)]:
        if (ref / rel).is_file() and (mine / rel).is_file():
            _tensors_equal(_checkpoint(mine / rel), _checkpoint(ref / rel), rel, diffs)
        elif (ref / rel).is_file():
            diffs.append(f"{rel}: missing")
    return diffs


def attempts_of(run_dir: Path) -> list[dict[str, Any]]:
    return td.read_jsonl(Path(run_dir) / td.ATTEMPTS)


def reconstruct(run_dir: Path, into: Path) -> Path:
    """The trial of `run_dir` trained alone (its config, one thread): the reference of a searched point
    the uninterrupted run did not draw."""
    import torch

    from xtra.trial import run_trial

    target = into / run_dir.name
    if td.read_result(target) is None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run_trial(td.read_config(run_dir), target)
        finally:
            torch.set_num_threads(threads)
    return target


def optuna_values(study_dir: Path) -> list[float]:
    """The values of the COMPLETE trials in the search's optuna.db."""
    with contextlib.closing(sqlite3.connect(Path(study_dir) / st.OPTUNA_DB)) as db:
        rows = db.execute("SELECT v.value FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id "
                          "WHERE t.state = 'COMPLETE'").fetchall()
    return sorted(float(r[0]) for r in rows)


def work_lost(faults: list[dict[str, Any]], study_dir: Path) -> None:
    """Per fault, the samples retrained: for each trial it hit, what the trial had logged then minus the
    checkpoint its next attempt started from (set in place as `lost_samples`). The next attempt is the
    first start after the one the fault hit (known by its pid: the log's times are whole seconds, so a
    trial started in the fault's second would otherwise count as its own next attempt); a wsd branch
    with no checkpoint of its own restarts from its trunk's at ``branch_start``."""
    for fault in faults:
        lost = 0
        for hit in fault.get("hit", []):
            starts = [a for a in attempts_of(td.path(study_dir, hit["trial"])) if a.get("event") == "start"]
            own = [i for i, a in enumerate(starts) if hit.get("pid") is not None and a.get("pid") == hit["pid"]]
            if own:
                later = starts[own[-1] + 1:]
            else:
                since = int(fault["time"])
                later = [a for a in starts if time.mktime(time.strptime(a["time"], "%Y-%m-%d %H:%M:%S")) >= since]
            hit["lost"] = 0
            if later:  # a wsd branch without a checkpoint of its own starts again from its trunk's, at branch_start
                floor = int((td.read_result(td.path(study_dir, hit["trial"])) or {}).get("branch_start") or 0)
                restart = max(int(later[0].get("checkpoint_samples") or 0), floor)
                hit["lost"] = max(0, int(hit["samples"]) - restart)
            lost += hit["lost"]
        fault["lost_samples"] = lost


def planned_trials(study: Any) -> int:
    """The trials a study finishes (trunks aside): a grid's expansion, a search's samples, or a halving
    search's rung sizes summed (4 configurations, eta 2: 4 + 2 + 1 branches)."""
    if study.search is None:
        return len(study.expand())
    if study.search.halving:
        from xtra.studies import halving

        return sum(halving.rung_sizes(study))
    return study.search.num_samples


def _rung_lines(rung: dict[str, Any]) -> dict[int, tuple[Any, ...]]:
    return {int(e["config"]): (e.get("trial_id"), e.get("config_hash"), e.get("status"), e.get("value"))
            for e in rung.get("entries", [])}


def ladder_differences(mine: dict[str, Any] | None, ref: dict[str, Any] | None) -> list[str]:
    """Where a halving ladder (``xtra.studydir.read_ladder``) differs from the uninterrupted run's: the
    search it was built for, the configurations proposed, and per rung its budget, each trial's status and
    metric value, and the configurations promoted (one line each)."""
    if ref is None:
        return [f"{st.LADDER}: the uninterrupted run wrote no ladder"]
    if mine is None:
        return [f"{st.LADDER}: missing (the uninterrupted run decided {len(ref['rungs'])} rungs)"]
    diffs = [f"{st.LADDER}: {key} differ" for key in ("search", "configs") if mine.get(key) != ref.get(key)]
    if len(mine["rungs"]) != len(ref["rungs"]):
        diffs.append(f"{st.LADDER}: {len(mine['rungs'])} rungs decided, the uninterrupted run {len(ref['rungs'])}")
    for r, (a, b) in enumerate(zip(mine["rungs"], ref["rungs"])):
        where = f"{st.LADDER} rung {r} ({b.get('samples')} samples)"
        if a.get("samples") != b.get("samples"):
            diffs.append(f"{where}: budget {a.get('samples')}")
        lines, ref_lines = _rung_lines(a), _rung_lines(b)
        if set(lines) != set(ref_lines):
            diffs.append(f"{where}: configurations {sorted(lines)} vs {sorted(ref_lines)}")
        for c in sorted(set(lines) & set(ref_lines)):
            if lines[c] != ref_lines[c]:
                diffs.append(f"{where}: config {c} (trial id, hash, status, value) {lines[c]} vs {ref_lines[c]}")
        if a.get("promoted") != b.get("promoted"):
            diffs.append(f"{where}: promoted {a.get('promoted')} vs {b.get('promoted')}")
    return diffs


def allowed_finishes(rows: Any, halving: bool) -> dict[str, int]:
    """How many times a trial may finish: once, but a halving trunk is continued once per rung its
    configuration reaches (each rung's branch names its trunk), finishing each time."""
    if not halving or not rows.height or "trunk" not in rows.columns:
        return {}
    return dict(Counter(trunk for trunk in rows["trunk"].to_list() if trunk))


def check_study(study_dir: Path, reference: Path, scratch: Path, *, search: bool, report: bool = True
                ) -> dict[str, Any]:
    """Every check of one study directory (a full local copy) against its uninterrupted run."""
    import polars as pl

    from xtra.studies.load import load_study_dir

    study = load_study_dir(study_dir)
    halving = study.search is not None and study.search.halving
    expected = planned_trials(study)
    trials, problems = {}, []
    for run_dir in td.trial_dirs(study_dir):
        events = [a.get("event") for a in attempts_of(run_dir)]
        result = td.read_result(run_dir) or {}
        trials[run_dir.name] = {"starts": events.count("start"), "finishes": events.count("finish"),
                                "last": events[-1] if events else None, "role": result.get("role"),
                                "status": result.get("status")}
    # trial.json is a trial's commit point (``xtra.trialdir.status_of``); its "finish" event goes to storage
    # after it, so a kill in between leaves a finished trial whose attempts log ends at "start": counted
    # apart (the log's gap), not as a trial left running
    rows = pl.read_parquet(study_dir / st.RESULTS) if (study_dir / st.RESULTS).is_file() else pl.DataFrame()
    finished = {h for h, t in trials.items() if t["status"] == td.FINISHED}
    allowed = allowed_finishes(rows, halving)
    duplicated = sorted(h for h, t in trials.items() if t["finishes"] > allowed.get(h, 1))
    unfinished = sorted(h for h, t in trials.items() if h not in finished)
    finish_unlogged = sorted(h for h in finished if trials[h]["last"] != "finish")
    results = rows.filter(pl.col("status") == "finished")["config_hash"].to_list() if rows.height else []
    lost = max(0, expected - len(results))
    if rows.height != expected or len(results) != expected:
        problems.append(f"results.parquet: {rows.height} rows, {len(results)} finished, {expected} planned")
    if not set(results) <= finished:
        problems.append(f"results.parquet names trials without a finished trial.json: {set(results) - finished}")
    ladder = st.read_ladder(study_dir) if halving else None
    if halving:  # the promotions a resumed driver made: the same as without the fault
        problems += ladder_differences(ladder, st.read_ladder(reference))
    elif search:
        values = optuna_values(study_dir)
        metric = sorted(float(v) for v in rows[study.search.metric].to_list()) if rows.height else []
        if values != metric:
            problems.append(f"optuna.db COMPLETE values {values} != results.parquet {study.search.metric} {metric}")
    if report:
        from xtra.reports.build import build_report

        summary = (Path(build_report(study_dir, n_boot=0)).parent / "summary.md").read_text()
        line = f"{expected} trials, {expected} finished."
        if line not in summary:
            problems.append(f"report/summary.md does not say {line!r}")
    compared, reconstructed, different = 0, 0, {}
    for h in sorted(finished):
        ref = td.path(reference, h)
        if td.read_result(ref) is None:
            if trials[h]["role"] == "trunk":
                continue
            ref = reconstruct(td.path(study_dir, h), scratch)
            reconstructed += 1
        diffs = trial_differences(td.path(study_dir, h), ref)
        compared += 1
        if diffs:
            different[h] = diffs
    return {"planned": expected, "trial_dirs": len(trials), "finished": len(results), "lost": lost,
            "duplicated": duplicated, "left_running": unfinished, "finish_unlogged": finish_unlogged,
            "starts": sum(t["starts"] for t in trials.values()),
            "ladder_rungs": len((ladder or {}).get("rungs", [])) if halving else None,
            "compared": compared, "reconstructed": reconstructed, "different": different, "problems": problems}


def summarise(seed: int, quick: bool, runs: list[dict[str, Any]], reference: dict[str, float], wall_s: float,
              load: list[float], sched: Any, kinds: tuple[str, ...]) -> dict[str, Any]:
    """The campaign's record: counts per fault kind, trials, resumes, lost, duplicated, work lost."""
    faults = [f for r in runs for f in r["faults"]]
    per_kind = {k: sum(1 for f in faults if f["kind"] == k) for k in kinds}
    lost = [int(f.get("lost_samples", 0)) for f in faults]
    checks = [r["check"] for r in runs]
    return {
        "seed": seed, "quick": quick, "wall_s": round(wall_s, 1), "load_1min": [round(x, 2) for x in load],
        "cpus": os.cpu_count(), "schedule": {"gap_s": sched.gap_s, "outage_s": sched.outage_s,
                                             "node_down_s": sched.node_down_s, "per_study": sched.per_study},
        "faults": len(faults), "faults_per_kind": {k: n for k, n in per_kind.items() if n},
        "trials": sum(c["planned"] for c in checks), "resumes": sum(r["resumes"] for r in runs),
        "lost": sum(c["lost"] for c in checks), "duplicated": sum(len(c["duplicated"]) for c in checks),
        "left_running": sum(len(c["left_running"]) for c in checks),
        "finish_unlogged": sum(len(c.get("finish_unlogged", ())) for c in checks),
        "different": sum(len(c["different"]) for c in checks), "compared": sum(c["compared"] for c in checks),
        "problems": [p for c in checks for p in c["problems"]],
        "violations": [v for r in runs for v in r["violations"]],
        "notes": [n for r in runs for n in r.get("notes", [])],
        "work_lost_samples": {"mean": round(sum(lost) / max(len(lost), 1), 1), "worst": max(lost, default=0),
                              "worst_per_trial": max((int(h.get("lost", 0)) for f in faults for h in f["hit"]),
                                                     default=0)},
        "reference_s": reference, "segments": runs,
    }


def passed(result: dict[str, Any]) -> bool:
    return not (result["lost"] or result["duplicated"] or result["left_running"] or result["different"]
                or result["problems"] or result["violations"])


def _recomputed(work_lost: dict[str, Any]) -> str:
    """The work-lost figures' provenance when they were recomputed after the run (a corrected rule)."""
    if "recomputed" not in work_lost:
        return ""
    was = work_lost["as_run"]
    return (f"; recomputed {work_lost['recomputed']}; the run itself printed mean {was['mean']}, worst "
            f"{was['worst']}, worst per trial {was['worst_per_trial']}")


def to_markdown(result: dict[str, Any], command: str) -> str:
    r = result
    lines = [
        "# Fault campaign (CPU)", "",
        f"Command: `{command}` (seed {r['seed']}). {r['cpus']} CPU cores shared with other work: 1-minute load "
        f"average {r['load_1min'][0]} at the start, {r['load_1min'][-1]} at the end; {r['wall_s'] / 60:.1f} "
        f"minutes in all (uninterrupted reference runs included).", "",
        f"**{r['faults']} faults over {r['trials']} trials, {r['resumes']} resumes: {r['lost']} lost, "
        f"{r['duplicated']} duplicated, {r['left_running']} left running, {r['different']} of {r['compared']} "
        f"trial directories (wsd trunks included) different from the uninterrupted run.** Work lost per fault "
        f"(samples retrained): mean "
        f"{r['work_lost_samples']['mean']}, worst {r['work_lost_samples']['worst']} (a fault may hit several "
        f"trials); worst per trial hit {r['work_lost_samples'].get('worst_per_trial', '?')} (checkpoint interval "
        f"256, 128 in a halving search){_recomputed(r['work_lost_samples'])}. Finished trials whose attempts "
        f"log lacks its `finish` (a kill between committing trial.json "
        f"and the log): {r.get('finish_unlogged', 0)}.", "",
        "| fault | count |", "|---|---|",
        *(f"| {k} | {n} |" for k, n in r["faults_per_kind"].items()), "",
        "| study | faults | resumes | planned | finished | lost | duplicated | compared (reconstructed) | "
        "different | wall (s) |", "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seg in r["segments"]:
        c = seg["check"]
        lines.append(f"| {seg['segment']} | {len(seg['faults'])} | {seg['resumes']} | {c['planned']} | {c['finished']} "
                     f"| {c['lost']} | {len(c['duplicated'])} | {c['compared']} ({c['reconstructed']}) | "
                     f"{len(c['different'])} | {seg['wall_s']} |")
    lines += ["", f"Problems: {r['problems'] or 'none'}. Violations: {r['violations'] or 'none'}. "
              f"Notes: {r.get('notes') or 'none'}.", "", *ABOUT]
    return "\n".join(lines) + "\n"


ABOUT = (
    "## What the campaign does",
    "",
    "Each study runs twice on one two-node Ray cluster of this machine (`ray start --head`, 2 CPUs, and a "
    "second `ray start` node, 1 CPU): once uninterrupted (the reference), once under faults. While trials "
    "run, a fault is drawn from the seeded schedule (kind, gap after a trial is running, outage length) and "
    "injected; afterwards the campaign does what a user would: `xtra study resume DIR` after the driver "
    "died or stopped (also after a driver that ended with a trial failed), nothing for faults the study "
    "rides out. A study takes at most `per_study` faults (16), then finishes undisturbed: one that takes faults "
    "faster than it trains would never end.",
    "",
    "- `driver_sigkill`, `driver_sigterm`: the `xtra study` driver; then `xtra study resume DIR`.",
    "- `worker_sigkill`: SIGKILL of one running trial's Ray worker process (Tune retries it).",
    "- `node_sigkill`: SIGKILL of the second node's raylet and every process under it, the node started "
    "again 2-8 s later.",
    "- `storage_outage` (studies in S3 only): the local S3 server stopped with SIGSTOP for 10-60 s, then "
    "SIGCONT (a stop and restart of moto would lose every object: it keeps them in memory). A driver that "
    "cannot refresh its lease for 60 s gives the study up (exit 3) and is resumed.",
    "- `second_driver`: `xtra study resume DIR` started while the driver runs: it must refuse in one line.",
    "- `break_lock`: `xtra study resume DIR --break-lock`: the first driver must stop (exit 3), the new one "
    "finishes the study.",
    "- Disk-full is not injected: this machine offers no small filesystem a campaign could fill safely (no "
    "tmpfs or loop mount without privileges), and filling the shared disk would stop everyone's work.",
    "",
    "Checks per study, on a full copy (a study in S3 is pulled from its URI with every checkpoint): every "
    "planned trial has a finished trial.json, its commit point (else lost or left running), and at most one "
    "`finish` in attempts.jsonl (else duplicated: trained to the end twice; a finished trial whose log lacks "
    "the `finish`, written to storage after trial.json, is counted apart); results.parquet has one finished "
    "row per planned trial (a halving search's planned trials: its rungs' sizes summed, 4 + 2 + 1 branches "
    "for 4 configurations at eta 2; a halving trunk is continued once per rung its configuration reaches, so it "
    "may finish that many times); an Optuna search's optuna.db holds one "
    "COMPLETE value per row; a halving search's ladder (halving.json: the configurations proposed, and per rung "
    "each trial's status and metric value and the configurations promoted) equals the uninterrupted run's, "
    "so a resume decided every rung as the run without faults did; "
    "the report says `N trials, N finished`; each trial's trial.json, metrics.jsonl, "
    "probe files and checkpoints (model, optimizer, RNG and data state) equal the uninterrupted run's, "
    "timing fields aside. A searched point the uninterrupted run did not draw (a resumed search's sampler "
    "moves on) is held against the same config trained alone (`reconstructed`). Work lost per fault: for "
    "each trial it hit, the samples the trial had logged when the fault fired minus the checkpoint its next "
    "attempt started from (log rows come every 128 samples, checkpoints every 256; every 128 in the halving "
    "search, whose trunks and branches train 64-192 samples at a time).",
    "",
    "Regression tests: `tests/test_fault_campaign.py` runs the short campaign (`--quick`: one fault of each "
    "kind but `break_lock`, in a study in S3 on a two-node cluster; `tests/test_lease.py` covers `break_lock` "
    "end to end in a local directory and S3) and shows the checks catch a changed weight or metric.",
    "",
    "## What the campaign found (fixed, each with a regression test in tests/test_fault_campaign.py)",
    "",
    "1. A second driver on a study in S3 refreshed the local copy from storage before asking for the lease, "
    "so a refused `resume` (and `status`) replaced files under the live driver; with `--break-lock` on a "
    "search the live driver's next Optuna write failed (`attempt to write a readonly database`) and it "
    "exited 1 instead of stopping with exit 3, and the optuna.db it left lacked a finished trial's value. "
    "Now a driver refreshes its copy only once it holds the lease, and `status` reads a live driver's copy "
    "as it is (`test_a_refused_second_driver_and_status_leave_a_live_drivers_copy_alone`).",
    "2. A search stopped by SIGTERM with points not yet drawn exited 0 (a Slurm job script requeues on 75), "
    "and its resume dropped the trial the stop had checkpointed: Ray's Optuna searcher ignores a point to "
    "evaluate whose names are not its space's (`pretrain.lr` for `params/pretrain.lr`) and draws a fresh "
    "one, so the stopped trial stayed interrupted and every later resume exited 1 "
    "(`test_a_search_stopped_by_sigterm_exits_for_a_requeue_and_resumes`).",
    "3. A resumed wsd study in S3 trained the branches of an already finished trunk from scratch (4 of 8 in "
    "the campaign: the same weights and results, but 1,024 samples each instead of a 256-sample cooldown): "
    "the plan looked for the trunk's kept checkpoints in the driver's copy, which holds no checkpoints of a "
    "study kept in storage. The finished trunk's row names what it kept (`keep_at`); the branches start "
    "there (`test_a_finished_trunk_in_storage_still_gives_its_branches_their_start`).",
    "4. A halving search in S3 hung at its second rung, faults or not (the halving-s3 segment's uninterrupted "
    "run): a branch scheduled beside its trunk copied the trunk from storage while the trunk was being "
    "continued, found it finished (at the previous rung's branch point) and took that copy as final, then "
    "waited forever for a checkpoint the copy would never get. A trunk finished short of the branch's start "
    "is now refreshed until that checkpoint is stored "
    "(`test_a_halving_branch_in_storage_waits_for_its_trunk_continued_past_the_last_rung`).",
    "",
    "Two alarms of an earlier run were the checks' own, now corrected: (a) two trials of grid-s3 counted "
    "'left running' had their trial.json in storage (so `xtra study status` and the results said finished) "
    "but no `finish` in attempts.jsonl: a driver SIGKILL one second after a 49-s storage outage ended fell "
    "between a trial committing trial.json and writing its log. trial.json is the commit point; writing the "
    "log first would instead retrain a trial killed in that gap. The check now holds trials to trial.json "
    "and counts such log gaps apart. (b) A second driver started as the first was exiting took the study "
    "after it (the lock passed between them) and exited 0: a note, not a refusal to demand.",
)
