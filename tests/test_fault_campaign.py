"""The fault campaign (`xtra bench --sections faults`): its checks catch what they promise to catch, and
its short size (one fault of each kind a study rides out or resumes from, on a real two-node Ray cluster
with the study in S3 on the local server) loses no trial, finishes none twice and changes no result."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xtra import trialdir as td
from xtra.studies import fault_campaign as fc
from xtra.studies import fault_checks as checks

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _trial(run_dir: Path, weight: float, wall_s: float) -> Path:
    """A trial directory's files as a trial writes them (result, metrics, a probe, a checkpoint)."""
    (run_dir / td.PROBES).mkdir(parents=True)
    td.write_result(run_dir, {"status": "finished", "linear_top1": 0.5, "wall_s": wall_s, "images_per_s": 1 / wall_s})
    td.write_metrics(run_dir, [{"samples_seen": 128, "loss": 0.9, "wall_s": wall_s}])
    (run_dir / td.PROBES / "p.json").write_text(json.dumps({"rows": [{"top1": 0.5, "wall_s": wall_s}]}))
    torch.save({"model": {"w": torch.full((3,), weight)}, "optimizer": {"state": {}}, "step": 2, "samples_seen": 128,
                "wall_s": wall_s}, run_dir / td.CHECKPOINT)
    return run_dir


def test_trials_differing_only_in_timings_are_equal_and_a_changed_weight_is_found(tmp_path: Path) -> None:
    ref = _trial(tmp_path / "ref", 1.0, wall_s=3.0)
    assert checks.trial_differences(_trial(tmp_path / "same", 1.0, wall_s=7.5), ref) == []
    other = _trial(tmp_path / "other", 1.0, wall_s=3.0)
    torch.save({"model": {"w": torch.tensor([1.0, 1.0, 1.0 + 2**-20])}, "optimizer": {"state": {}}, "step": 2,
                "samples_seen": 128}, other / td.CHECKPOINT)
    td.write_metrics(other, [{"samples_seen": 128, "loss": 0.90001, "wall_s": 3.0}])
    assert checks.trial_differences(other, ref) == [td.METRICS, "checkpoint.pt.model.w"]


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def test_work_lost_is_what_a_hit_trial_had_logged_past_the_checkpoint_it_restarted_from(tmp_path: Path) -> None:
    run_dir = td.path(tmp_path, "abc")
    run_dir.mkdir(parents=True)
    fault_time = 1_800_000_000.0
    for event in ({"event": "start", "time": stamp(fault_time - 60), "checkpoint_samples": None},
                  {"event": "start", "time": stamp(fault_time + 5), "checkpoint_samples": 512},
                  {"event": "start", "time": stamp(fault_time + 90), "checkpoint_samples": 768}):
        td.append_jsonl(run_dir / td.ATTEMPTS, event)
    faults = [{"time": fault_time, "hit": [{"trial": "abc", "samples": 640}]}, {"time": fault_time, "hit": []}]
    checks.work_lost(faults, tmp_path)
    assert [f["lost_samples"] for f in faults] == [128, 0]
    # a trial started in the fault's own second, known by its pid: its next attempt is the one after it
    other = td.path(tmp_path, "def")
    other.mkdir(parents=True)
    for event in ({"event": "start", "time": stamp(fault_time), "pid": 11, "checkpoint_samples": None},
                  {"event": "start", "time": stamp(fault_time + 5), "pid": 12, "checkpoint_samples": 512}):
        td.append_jsonl(other / td.ATTEMPTS, event)
    same_second = [{"time": fault_time + 0.5, "hit": [{"trial": "def", "samples": 640, "pid": 11}]}]
    checks.work_lost(same_second, tmp_path)
    assert same_second[0]["lost_samples"] == 128
    td.write_result(other, {"status": "finished", "branch_start": 576})  # a wsd branch restarts at its trunk's
    checks.work_lost(same_second, tmp_path)
    assert same_second[0]["lost_samples"] == 640 - 576


def _ladder(values: list[list[float | None]]) -> dict:
    """The smoke halving search's ladder (4 configurations, eta 2) with these metric values per rung,
    promoted as the plan promotes (``halving.promote``)."""
    from xtra.studies import halving
    from xtra.studies.load import load_study

    study = load_study("lr-halving", preset="smoke")
    ladder, alive = halving.new_ladder(study), list(range(4))
    for r, (budget, rung_values) in enumerate(zip(halving.rung_budgets(study), values, strict=True)):
        entries = [{"config": i, "config_hash": f"h{i}-{budget}", "trial_id": f"c{i}:samples={budget}",
                    "status": "finished" if v is not None else "failed", "value": v}
                   for i, v in zip(alive, rung_values, strict=True)]
        alive = halving.promote(entries, max(1, len(alive) // 2) if r < 2 else 1, "max")
        ladder["rungs"].append({"samples": budget, "entries": entries, "promoted": alive})
    return ladder


def test_the_halving_ladder_check_finds_a_changed_metric_or_promotion() -> None:
    from xtra.studies import halving
    from xtra.studies.load import load_study

    ref = _ladder([[0.28, 0.29, 0.27, 0.30], [0.31, 0.32], [0.33]])
    assert [r["promoted"] for r in ref["rungs"]] == [[1, 3], [3], [3]]
    assert checks.ladder_differences(json.loads(json.dumps(ref)), ref) == []
    # a resumed rung that lost one trial's value: the ranking moved, and so did who went on
    lost = _ladder([[0.28, None, 0.27, 0.30], [0.31, 0.32], [0.33]])
    diffs = checks.ladder_differences(lost, ref)
    assert any("rung 0 (128 samples): config 1" in d and "'failed', None" in d for d in diffs), diffs
    assert "halving.json rung 0 (128 samples): promoted [0, 3] vs [1, 3]" in diffs, diffs
    # a promotion changed by hand, every value the same
    moved = json.loads(json.dumps(ref))
    moved["rungs"][1]["promoted"] = [1]
    assert checks.ladder_differences(moved, ref) == ["halving.json rung 1 (256 samples): promoted [1] vs [3]"]
    # a value off in its last digit, a rung not decided, no ladder at all
    close = json.loads(json.dumps(ref))
    close["rungs"][2]["entries"][0]["value"] = 0.3301
    assert checks.ladder_differences(close, ref) == [
        "halving.json rung 2 (512 samples): config 3 (trial id, hash, status, value) "
        "('c3:samples=512', 'h3-512', 'finished', 0.3301) vs ('c3:samples=512', 'h3-512', 'finished', 0.33)"]
    assert checks.ladder_differences({**ref, "rungs": ref["rungs"][:2]}, ref) == [
        "halving.json: 2 rungs decided, the uninterrupted run 3"]
    assert checks.ladder_differences(None, ref) == ["halving.json: missing (the uninterrupted run decided 3 rungs)"]
    # what a halving search plans: its rung sizes summed; the campaign's segment is that search
    study = load_study("lr-halving", preset="smoke", sets={"pretrain.samples": 512, "search.rungs": [128, 256, 512],
                                                           "pretrain.checkpoint_every": 128})
    assert halving.rung_sizes(study) == (4, 2, 1) and checks.planned_trials(study) == 7
    assert any(seg.study == "lr-halving" for seg in fc.FULL_SEGMENTS)


def test_a_halving_trunk_may_finish_once_per_rung_its_branches_name_it() -> None:
    import polars as pl

    rows = pl.DataFrame({"config_hash": ["a", "b", "c", "d"], "trunk": ["t1", "t2", "t1", "t1"]})
    assert checks.allowed_finishes(rows, halving=True) == {"t1": 3, "t2": 1}
    assert checks.allowed_finishes(rows, halving=False) == {}  # a wsd grid's trunk trains once


def test_the_schedule_is_the_seeds() -> None:
    seg = fc.FULL_SEGMENTS[0]
    kinds, weights = fc.kinds_for(seg, fc.Schedule(seed=3))
    assert "storage_outage" not in kinds and set(kinds) == set(fc.KINDS) - {"storage_outage"}  # a local study
    draw = lambda seed: [fc.random.Random(seed).choices(kinds, weights)[0] for _ in range(5)]  # noqa: E731
    assert draw(3) == draw(3)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")
def test_a_short_fault_campaign_loses_nothing_and_changes_no_result(tmp_path: Path) -> None:
    pytest.importorskip("moto")
    result = fc.run_campaign(0, quick=True, root=tmp_path)
    assert {k: n for k, n in result["faults_per_kind"].items() if n} == {k: 1 for k in fc.QUICK_ORDER}, result
    assert result["lost"] == 0 and result["duplicated"] == 0 and result["left_running"] == 0, result
    assert result["compared"] == result["trials"] == 2 and result["different"] == 0, result["segments"]
    assert result["resumes"] >= 2, result  # after the SIGTERM and the SIGKILL of the driver
    assert not result["problems"] and not result["violations"], result
    assert checks.passed(result)


# ---------------------------------------------------------------------------------------------
# What the campaign found, each fixed and held here


def test_a_refused_second_driver_and_status_leave_a_live_drivers_copy_alone(s3_bucket: str, tmp_path: Path) -> None:
    """Found by the campaign (break_lock in a search in S3): a second driver refreshed the study's local
    copy from storage before it asked for the lease, replacing files under the live driver (its optuna.db:
    the live driver's next Optuna write failed with "attempt to write a readonly database" and it exited 1).
    Now a driver refreshes its copy only once it holds the lease, and status reads a live driver's copy as
    it is: a refused `resume` and a `status` change no byte of it."""
    from typer.testing import CliRunner

    from xtra import lease
    from xtra import studydir as st
    from xtra.cli.study import app
    from xtra.storage import Storage
    from xtra.studies.load import load_study

    uri = f"{s3_bucket}/studies/live"
    stor = Storage.from_uri(uri)
    source = tmp_path / "source"
    st.write_study_toml(source, load_study("block-size", preset="smoke").to_toml())
    stor.put_file(source / st.STUDY_TOML, st.STUDY_TOML)
    stor.write_bytes(st.OPTUNA_DB, b"what storage holds")
    copy = tmp_path / "live"
    st.write_study_toml(copy, load_study("block-size", preset="smoke").to_toml())
    st.write_runs(copy, [{"state": "running", "storage_path": uri}])
    (copy / st.OPTUNA_DB).write_bytes(b"the live driver's open database")
    before = {p.name: (p.read_bytes(), p.stat().st_ino) for p in copy.iterdir() if p.is_file()}
    holder = subprocess.Popen(  # the live driver: another process on this host, holding the lock and lease
        [sys.executable, "-c", "import sys\nfrom xtra import lease\nfrom xtra.storage import Storage\n"
         f"lock = lease.StudyLock({str(copy)!r}, 'xtra study run', storage=Storage.from_uri({uri!r}), "
         "settle_s=0.0).acquire()\nprint('held', flush=True)\nsys.stdin.read()\nlock.release()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = CliRunner().invoke(app, ["resume", str(copy)])
        assert refused.exit_code != 0 and "in use by pid" in refused.output, refused.output
        status = CliRunner().invoke(app, ["status", str(copy)])
        assert status.exit_code == 0, status.output
        after = {p.name: (p.read_bytes(), p.stat().st_ino) for p in copy.iterdir() if p.is_file()
                 and p.name != lease.LOCK}
        assert after == {k: v for k, v in before.items() if k != lease.LOCK}
    finally:
        holder.communicate("", timeout=60)
    assert not (copy / lease.LOCK).exists()


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")
def test_a_search_stopped_by_sigterm_exits_for_a_requeue_and_resumes(tmp_path: Path) -> None:
    """Found by the campaign (driver_sigterm in a search): a search stopped with points not yet drawn
    exited 0, as if done, so a Slurm job script (which requeues on exit 75) would leave it unfinished
    (its trial directories hold no trace of the points not drawn; the run's own verdict now decides).
    And its resume dropped the stopped trial: Ray's Optuna searcher ignored the point to evaluate again
    (named `pretrain.lr`, not `params/pretrain.lr` as in its space) and drew a fresh one, so the stopped
    trial stayed interrupted and every later resume exited 1."""
    import signal

    import faults
    from drivers import driver_env, starts, study_process

    from xtra import studydir as st
    from xtra.studies.slurm import STOPPED_EXIT

    study_dir = tmp_path / "search"
    args = ("lr-search", "--preset", "smoke", "--set", "pretrain.samples=2048", "--set",
            "search.num_samples=3", "--max-concurrent", "1", "--out", str(study_dir))
    # the first trial pauses after its first checkpoint, so the SIGTERM lands mid-pretraining (on a
    # loaded box a 2,048-sample trial could otherwise be probing by the time the stop flag is raised)
    first = study_process("run", *args, env=driver_env(**faults.env(HOLD_ONCE="pretrain.samples=2048@128")))
    held = study_dir / faults.HELD
    try:
        deadline = time.monotonic() + 300
        while not held.exists():
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline, "no trial checkpointed"
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == STOPPED_EXIT, out
    assert "interrupted with trials unfinished" in out, out
    resumed = study_process("resume", str(study_dir))
    out2, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out2
    finished = [d for d in study_dir.glob("trials/*") if td.read_result(d)]
    assert len(finished) == 3 and checks.optuna_values(study_dir) == sorted(
        float(td.read_result(d)["linear_top1"]) for d in finished)
    stopped = []
    for run_dir in study_dir.glob("trials/*"):
        events = [a["event"] for a in checks.attempts_of(run_dir)]
        assert events.count("finish") == 1 and events[-1] == "finish" and starts(run_dir) >= 1, events
        if "preempted" in events:  # the trial the SIGTERM stopped: rerun from its checkpoint, not dropped
            stopped.append(run_dir)
            resumed_from = [a for a in checks.attempts_of(run_dir) if a["event"] == "start"][-1]
            assert int(resumed_from["checkpoint_samples"] or 0) > 0, events
    assert [d.name for d in stopped] == [held.read_text()] and len(st.read_runs(study_dir)) == 2


def test_a_halving_branch_in_storage_waits_for_its_trunk_continued_past_the_last_rung(
        s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the campaign's halving segment (its uninterrupted run, a study in S3): a rung-2 branch
    scheduled beside its trunk copied the trunk from storage while the trunk was being continued; the stored
    trunk said finished (at rung 1's branch point, 64 samples), so the branch took that copy as final and
    xtra.trial waited for the checkpoint at 192 in a copy never refreshed: the study hung. A trunk finished
    short of the branch's start is refreshed until its checkpoint there is stored."""
    from xtra.checkpoint import kept_checkpoint
    from xtra.studies.ray.trialfiles import TrialSync

    monkeypatch.setenv("XTRA_SCRATCH", str(tmp_path / "node"))
    uri = f"{s3_bucket}/studies/halving"
    trunk = TrialSync(uri, "trunk1")

    def store_trunk(samples: int) -> None:  # the trunk's commit at the end of a rung's continuation
        trunk.run_dir.mkdir(parents=True, exist_ok=True)
        td.write_result(trunk.run_dir, {"status": "finished", "role": "trunk", "samples_seen": samples,
                                        "keep_at": [samples]})
        kept_checkpoint(trunk.run_dir, samples).parent.mkdir(exist_ok=True)
        kept_checkpoint(trunk.run_dir, samples).write_bytes(f"weights at {samples}".encode())
        trunk.upload()

    store_trunk(64)  # rung 1's trunk, finished; rung 2's continuation (to 192) is under way
    polls: list[dict] = []

    def report(event: dict) -> None:  # the branch waits: the continuation finishes meanwhile
        polls.append(event)
        assert len(polls) < 5, "the branch never saw the trunk's checkpoint at 192"
        if len(polls) == 1:
            store_trunk(192)

    job = TrialSync(uri, "branch1").trunk(td.WsdJob(td.BRANCH, trunk_dir="/driver/trials/trunk1", start=192), report)
    assert len(polls) == 1, "the branch took the trunk's rung-1 copy as final"
    assert kept_checkpoint(Path(job.trunk_dir), 192).read_bytes() == b"weights at 192"
    assert td.read_result(Path(job.trunk_dir))["samples_seen"] == 192


def test_a_finished_trunk_in_storage_still_gives_its_branches_their_start(tmp_path: Path) -> None:
    """Found by the campaign (faults in a wsd study in S3): a resume after a trunk had finished trained 4
    of 8 branches from scratch (the same result, 4x the samples): the plan looked for the trunk's kept
    checkpoints in the driver's copy, which holds no checkpoints of a study kept in storage. The finished
    trunk's row names what it kept (`keep_at`); the branches start there."""
    from xtra.studies.load import load_study
    from xtra.studies.plan import make_plan

    study = load_study("sample-budget", preset="smoke", sets={"pretrain.schedule": "wsd", "axes.model.block_size": [1],
                                                              "axes.pretrain.samples": [256, 512]})
    (trunk,) = make_plan(study, tmp_path).trunks
    tdir = td.path(tmp_path, trunk.config_hash)
    tdir.mkdir(parents=True)  # the copy: the trunk's light files, no checkpoints/
    td.write_result(tdir, {"status": "finished", "role": "trunk", "samples_seen": trunk.config.pretrain.samples,
                           "keep_at": list(trunk.keep_at)})
    td.append_jsonl(tdir / td.ATTEMPTS, {"event": "start"})
    td.append_jsonl(tdir / td.ATTEMPTS, {"event": "finish"})
    after = make_plan(study, tmp_path)
    assert after.trunks == () and sorted(b.start for b in after.branches.values()) == [192, 384]
    assert after.samples["trained"] == (256 - 192) + (512 - 384)
