"""The halving bench's reading of ASHA at halving's sample count: which trials had finished by a cap
(``finished_within``), the pick there, the cap watcher, and the grid sampler's proposal order. No Ray."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from xtra import trialdir as td
from xtra.studies import halving_bench as hb

FULL = 2000


def _trial(study: Path, name: str, lr: float, warmup: int, rows: list[tuple[float, int]], finish: str | None,
           start: str = "2026-01-01 12:00:00", event: str = "finish") -> Path:
    """A trial directory as a run leaves it: its start (and finish) records, one metrics row per log window
    (wall_s since its start, samples_seen), its params."""
    run = study / "trials" / name
    run.mkdir(parents=True)
    td.append_jsonl(run / td.ATTEMPTS, {"event": "start", "time": start})
    for wall, seen in rows:
        td.append_metrics(run, {"step": seen // 100, "samples_seen": seen, "loss": 1.0, "wall_s": wall})
    if finish is not None:
        td.append_jsonl(run / td.ATTEMPTS, {"event": event, "time": finish})
    td.write_params(run, study="s", preset=None, trial_id=name, params={"pretrain.lr": lr,
                    "pretrain.warmup_samples": warmup}, seed=0, config_hash=name)
    return run


def _study(tmp_path: Path) -> Path:
    """a: 1,000 samples at 10 s, 2,000 (full) at 20 s, finished (probe included) at 30 s;
    b: 1,000 at 15 s, 2,000 at 40 s, finished at 60 s; c: 1,000 at 25 s, stopped by ASHA at 26 s."""
    study = tmp_path / "study"
    _trial(study, "a", 3e-3, 0, [(10, 1000), (20, 2000)], "2026-01-01 12:00:30")
    _trial(study, "b", 1e-3, 0, [(15, 1000), (40, 2000)], "2026-01-01 12:01:00")
    _trial(study, "c", 3e-4, 0, [(25, 1000)], "2026-01-01 12:00:26", event="stopped")
    return study


def test_finished_within_keeps_the_trials_finished_when_the_cap_was_passed(tmp_path):
    study = _study(tmp_path)
    # samples in time order: a 1000 (10 s), b 1000 (15 s), a 1000 (20 s), c 1000 (25 s), b 1000 (40 s)
    assert hb.finished_within(study, 2500, FULL) == []  # passed at 20 s: a finished (probed) at 30 s
    assert hb.finished_within(study, 3500, FULL) == []  # passed at 25 s
    assert hb.finished_within(study, 4500, FULL) == ["a"]  # passed at 40 s: a by then, b at 60 s
    assert hb.finished_within(study, 5000, FULL) == ["a", "b"]  # never passed: every full-budget trial
    # c ended (ASHA stopped it) but never reached the full budget: never a pick


def test_pick_within_is_the_best_finished_by_then_on_the_study_own_top1(tmp_path):
    study = _study(tmp_path)
    top1 = {(3e-3, 0): 0.70, (1e-3, 0): 0.80}
    assert hb.pick_within(study, 2500, FULL, top1) is None
    assert hb.pick_within(study, 4500, FULL, top1) == (3e-3, 0)
    assert hb.pick_within(study, 5000, FULL, top1) == (1e-3, 0)


def test_at_cap_counts_the_windows_logged_before_the_cap_was_passed(tmp_path):
    study = _study(tmp_path)
    assert hb.at_cap(study, 2500, FULL).trained == {"a": 1000, "b": 1000, "c": 0}
    assert hb.at_cap(study, 4500, FULL).trained == {"a": 2000, "b": 1000, "c": 1000}
    assert hb.at_cap(study, 5000, FULL).trained == {"a": 2000, "b": 2000, "c": 1000}
    for cap in range(0, 6001, 250):
        assert sum(hb.at_cap(study, cap, FULL).trained.values()) <= cap
    proposed = [(3e-3, 0), (1e-3, 0), (3e-4, 0), (1e-3, 2500)]  # the last one never started
    got = hb.trained_by_proposal(study, proposed, 4500, FULL)
    assert got["samples_trained"] == 5000 and got["trial_dirs"] == 3
    assert [(c["samples_at_cap"], c["finished_at_cap"], c["asha_stopped_at_cap"]) for c in got["by_proposal"]] == [
        (2000, True, False), (1000, False, False), (1000, False, True), (0, False, False)]
    assert hb.at_cap(study, 2500, FULL).stopped == []  # passed at 20 s: c stopped at 26 s
    assert hb.at_cap(study, 4500, FULL).stopped == ["c"]


def test_over_cap_is_when_finished_within_has_a_moment(tmp_path):
    """The watcher stops a capped run once over_cap holds; finished_within then reads the run at a moment
    inside its records (not 'everything that finished')."""
    study = _study(tmp_path)
    assert sum(hb.samples_trained(study).values()) == 5000
    for cap in range(0, 6001, 250):
        passed = hb.over_cap(study, cap)
        assert passed == (cap < 5000)
        if not passed:
            assert hb.finished_within(study, cap, FULL) == ["a", "b"]


def test_stop_at_cap_signals_once_past_the_cap_and_not_before(tmp_path):
    got: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        study = tmp_path / "study"
        run = _trial(study, "a", 3e-3, 0, [(10, 1000)], None)
        with hb.stop_at_cap(study, 1500, every_s=0.02) as fired:
            time.sleep(0.2)
            assert got == [] and fired["samples"] is None  # 1,000 trained: under the cap
            td.append_metrics(run, {"step": 20, "samples_seen": 2000, "loss": 1.0, "wall_s": 20})
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.2)  # it would have signalled again by now
        assert got == [signal.SIGTERM]
        assert fired["samples"] == 2000 and fired["at"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_grid_order_is_the_seed_shuffled_grid_whatever_finishes_first():
    sc = hb.scale(30000)
    every = {(lr, w) for lr in hb.LRS for w in sc["warmups"]}
    orders = {seed: hb.grid_order(seed, hb.LRS, sc["warmups"]) for seed in range(5)}
    for order in orders.values():
        assert len(order) == 9 and set(order) == every
    assert len({tuple(o) for o in orders.values()}) > 1  # the seed changes the order

    # the sampler asked the way Ray's searcher asks it, trials finishing in another order in between
    import optuna

    space = {"params/pretrain.lr": list(hb.LRS), "params/pretrain.warmup_samples": sc["warmups"]}
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space, seed=3))
    asked, trials = [], []
    for i in range(9):
        t = study.ask()
        trials.append(t)
        asked.append((t.suggest_categorical("params/pretrain.lr", space["params/pretrain.lr"]),
                      t.suggest_categorical("params/pretrain.warmup_samples", space["params/pretrain.warmup_samples"])))
        if i in (2, 5):
            study.tell(trials[i], 0.5)  # the newest finishes first
            study.tell(trials[i - 2], state=optuna.trial.TrialState.PRUNED)
    assert asked == orders[3]


def test_study_files_of_other_orders_differ_only_in_name_and_seed():
    sc = hb.scale(30000)
    main, other = hb.study_toml("asha", sc, 20000), hb.study_toml("asha", sc, 20000, search_seed=3)
    assert "seed = " not in main.split("[search]")[1]  # the asha study of the four keeps its file (reused)
    assert other.count("\nseed = 3\n") == 1
    assert other.replace("\nseed = 3\n", "\n").replace("asha-seed3", "asha") == main
    with pytest.raises(ValueError):
        hb.study_toml("grid", sc, 20000, search_seed=1)


def test_study_file_of_another_order_parses_with_that_seed(tmp_path):
    from xtra.studies.load import load_study

    path = tmp_path / "asha-seed3.toml"
    path.write_text(hb.study_toml("asha", hb.scale(30000), 20000, search_seed=3))
    study = load_study(path)
    assert study.name == "halving-bench-asha-seed3"
    assert study.search.seed == 3 and study.search.sampler == "grid" and study.search.asha


def test_proposed_order_reads_the_search_database_in_trial_order(tmp_path):
    """What a study's optuna.db says it proposed, and that it is grid_order's order (the bench checks each
    capped run's proposals against it)."""
    import optuna

    sc = hb.scale(30000)
    space = {"params/pretrain.lr": list(hb.LRS), "params/pretrain.warmup_samples": sc["warmups"]}
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                sampler=optuna.samplers.GridSampler(space, seed=4))
    for _ in range(5):
        t = study.ask()
        for k, v in space.items():
            t.suggest_categorical(k, v)
    assert hb.proposed_order(tmp_path, "s") == hb.grid_order(4, hb.LRS, sc["warmups"])[:5]


def test_recorded_wall_sums_the_runs_of_a_study(tmp_path):
    from xtra import studydir as st

    st.write_runs(tmp_path, [{"started": "2026-01-01 12:00:00", "ended": "2026-01-01 12:10:30"},
                             {"started": "2026-01-01 13:00:00", "ended": "2026-01-01 13:00:15"},
                             {"started": "2026-01-01 14:00:00"}])  # a run without an end: not counted
    assert hb.recorded_wall(tmp_path) == 645.0
