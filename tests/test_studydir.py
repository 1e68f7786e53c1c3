"""The study directory without Ray: portable identity, the lease lock, the plan, one definition of status."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xtra import lease
from xtra import studydir as st
from xtra import trialdir as td
from xtra.cli.study import app
from xtra.config import RESOURCE_KEYS, TrialConfig
from xtra.overrides import override
from xtra.studies.load import load_study
from xtra.studies.plan import make_plan
from xtra.studies.spec import StudyError

# ---------------------------------------------------------------------------------------------
# Identity


def test_identity_ignores_resources_and_paths_but_not_science():
    base = TrialConfig()
    resources = {"data.root": "/elsewhere", "pretrain.device": "cpu", "pretrain.compile": True,
                 "pretrain.checkpoint_every": 777, "pretrain.log_every": 3, "probe.cache": "off",
                 "model.attention": "math"}
    assert set(resources) <= set(RESOURCE_KEYS)
    moved = override(base, resources)
    assert moved.config_hash() == base.config_hash() and moved.probe_hash() == base.probe_hash()
    for key, value in {"model.block_size": 2, "pretrain.lr": 3e-4, "seed": 1, "data.name": "mnist"}.items():
        assert override(base, {key: value}).config_hash() != base.config_hash(), key
    # a probe protocol is not pretraining identity: same trial directory, another probe key
    probed = override(base, {"probe.epochs": 3})
    assert probed.config_hash() == base.config_hash() and probed.probe_hash() != base.probe_hash()


def test_a_fingerprinted_collection_keeps_its_identity_when_it_moves():
    a = override(TrialConfig(), {"data.name": "imagefolder:/data/in1k", "data.fingerprint": "abc123"})
    b = override(a, {"data.name": "imagefolder:/mnt/nfs/imagenet"})
    assert a.config_hash() == b.config_hash()
    assert override(a, {"data.fingerprint": "other"}).config_hash() != a.config_hash()
    unnamed = override(TrialConfig(), {"data.name": "imagefolder:/data/in1k"})
    assert unnamed.config_hash() != override(unnamed, {"data.name": "imagefolder:/x"}).config_hash()


# ---------------------------------------------------------------------------------------------
# The lease


def _foreign_lock(study_dir: Path, heartbeat: float) -> None:
    (study_dir / lease.LOCK).write_text(json.dumps({"pid": 1, "host": "node-that-died", "started": "then",
                                                 "command": "xtra study run", "heartbeat": heartbeat}))


def test_a_lock_from_a_dead_host_is_taken_over_and_a_fresh_one_is_refused(tmp_path: Path) -> None:
    _foreign_lock(tmp_path, time.time() - 10 * lease.STALE_AFTER_S)
    lock = lease.StudyLock(tmp_path, "xtra study resume").acquire()
    try:
        assert lock.took_over["host"] == "node-that-died"
        assert lease.read_lock(tmp_path)["host"] == socket.gethostname()
    finally:
        lock.release()
    assert not (tmp_path / lease.LOCK).exists()

    _foreign_lock(tmp_path, time.time() - 5)
    with pytest.raises(lease.StudyLocked) as err:
        lease.StudyLock(tmp_path, "xtra study resume").acquire()
    msg = str(err.value)
    assert "pid 1 on node-that-died" in msg and "heartbeat 5s ago" in msg and "--break-lock" in msg
    # the user knows better
    lock = lease.StudyLock(tmp_path, "xtra study resume", break_lock=True).acquire()
    assert lock.took_over["host"] == "node-that-died"
    lock.release()


def test_the_holder_refreshes_its_heartbeat(tmp_path: Path) -> None:
    lock = lease.StudyLock(tmp_path, "test", heartbeat_s=0.05).acquire()
    try:
        first = lease.read_lock(tmp_path)["heartbeat"]
        deadline = time.monotonic() + 5
        while lease.read_lock(tmp_path)["heartbeat"] == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lease.read_lock(tmp_path)["heartbeat"] > first
        assert lease.read_lock(tmp_path)["pid"] == os.getpid()
    finally:
        lock.release()


def test_drivers_on_two_machines_share_one_lease_in_object_storage(s3_bucket: str, tmp_path: Path) -> None:
    """Two local copies of one study in S3 (two machines): the second driver is refused by the lease in
    storage, not by its own (empty) copy; after the first lets go the second runs."""
    from xtra.storage import Storage

    stor = Storage.from_uri(f"{s3_bucket}/studies/block-size")
    first = lease.StudyLock(tmp_path / "machine-a", "xtra study run", storage=stor, settle_s=0.05).acquire()
    try:
        assert stor.read_json(lease.LOCK)["pid"] == os.getpid()
        with pytest.raises(lease.StudyLocked) as err:
            lease.StudyLock(tmp_path / "machine-b", "xtra study resume", storage=stor, settle_s=0.05).acquire()
        msg = str(err.value)
        assert msg.startswith(f"{s3_bucket}/studies/block-size/{lease.LOCK}: in use by pid {os.getpid()}")
        assert "\n" not in msg and "--break-lock" in msg
        assert not (tmp_path / "machine-b" / lease.LOCK).exists()  # a refused driver leaves nothing behind
    finally:
        first.release()
    assert not stor.is_file(lease.LOCK)
    second = lease.StudyLock(tmp_path / "machine-b", "xtra study resume", storage=stor, settle_s=0.05).acquire()
    second.release()


def test_a_silent_lease_in_storage_is_taken_over_and_a_fresh_one_needs_break_lock(s3_bucket: str,
                                                                                  tmp_path: Path) -> None:
    from xtra.storage import Storage

    stor = Storage.from_uri(f"{s3_bucket}/study")
    dead = {"pid": 1, "host": "node-that-died", "command": "xtra study run", "token": "theirs",
            "heartbeat": time.time() - 10 * lease.STALE_AFTER_S}
    stor.write_json(lease.LOCK, dead)
    lock = lease.StudyLock(tmp_path / "copy", "xtra study resume", storage=stor, settle_s=0.05).acquire()
    assert lock.took_over["host"] == "node-that-died" and stor.read_json(lease.LOCK)["token"] == lock._me["token"]
    lock.release()

    stor.write_json(lease.LOCK, {**dead, "heartbeat": time.time() - 5})
    with pytest.raises(lease.StudyLocked, match="pid 1 on node-that-died .*heartbeat 5s ago"):
        lease.StudyLock(tmp_path / "copy", "xtra study resume", storage=stor, settle_s=0.05).acquire()
    lock = lease.StudyLock(tmp_path / "copy", "xtra study resume", storage=stor, settle_s=0.05,
                           break_lock=True).acquire()
    assert stor.read_json(lease.LOCK)["token"] == lock._me["token"]
    lock.release()


def test_the_shared_lease_is_refreshed_and_a_broken_one_is_left_alone(s3_bucket: str, tmp_path: Path) -> None:
    from xtra.storage import Storage

    stor = Storage.from_uri(f"{s3_bucket}/study")
    lock = lease.StudyLock(tmp_path / "a", "test", storage=stor, settle_s=0.0, heartbeat_s=0.3).acquire()
    try:
        first = stor.read_json(lease.LOCK)["heartbeat"]
        deadline = time.monotonic() + 10
        while stor.read_json(lease.LOCK)["heartbeat"] == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stor.read_json(lease.LOCK)["heartbeat"] > first
        # a refresh under way may land over the breaker's first write; the breaker writes again
        breaker = lease.StudyLock(tmp_path / "b", "xtra study resume", storage=stor, settle_s=0.5,
                               break_lock=True).acquire()
        time.sleep(1.0)  # several of the first holder's beats: none may write over the breaker's lease
        assert stor.read_json(lease.LOCK)["token"] == breaker._me["token"]
        breaker.release()
    finally:
        lock.release()
    assert not stor.is_file(lease.LOCK)  # the breaker removed its own lease; the first holder wrote none back


# ---------------------------------------------------------------------------------------------
# Study files


@pytest.mark.parametrize("text, expected", [("", "the study file is empty"),
                                            ('name = ""\n[axes]\n"model.block_size" = [1, 2]\n', "needs a name")])
def test_empty_or_nameless_study_files_are_one_line_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(StudyError, match=expected):
        load_study(path)
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and expected in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unknown_logger_is_refused(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["run", "block-size", "-p", "smoke", "--logger", "neptune", "--out",
                                   str(tmp_path / "o")])
    assert res.exit_code == 2 and "neptune" in res.output and "tensorboard, mlflow, wandb" in res.output


# ---------------------------------------------------------------------------------------------
# The plan and the one definition of status


def _fake_trial(study_dir: Path, spec, *, finished: bool = False, started: bool = False, probe_hash=None) -> Path:
    run = td.path(study_dir, spec.config_hash)
    run.mkdir(parents=True)
    td.write_config(run, spec.config)
    td.write_params(run, study="block-size", preset="smoke", trial_id=spec.trial_id, params=spec.params,
                    seed=spec.seed, config_hash=spec.config_hash)
    if started or finished:
        td.record_attempt(run, "start", pid=1)
        td.append_jsonl(run / td.METRICS, {"step": 1, "samples_seen": 64, "loss": 1.0, "lr": 1e-3, "wall_s": 0.1})
    if finished:
        td.write_result(run, {"samples_seen": 512, "probe_hash": probe_hash or spec.config.probe_hash()})
    return run


def test_plan_reuses_finished_continues_interrupted_and_reprobes_a_new_protocol(tmp_path: Path) -> None:
    study = load_study("block-size", preset="smoke", sets={"axes.model.block_size": [1, 2]}, seeds=2)
    k1, k2, k4, _ = study.expand()
    _fake_trial(tmp_path, k1, finished=True)
    _fake_trial(tmp_path, k2, started=True)
    plan = make_plan(study, tmp_path)
    assert plan.reused == (k1.config_hash,)
    assert [s.config_hash for s in plan.pending] == [k2.config_hash, k4.config_hash, _.config_hash]
    assert [s.status for s in plan.states] == ["finished", "interrupted", "pending", "pending"]
    assert [s.status for s in make_plan(study, tmp_path, running=True).states] == ["finished", "running", "pending",
                                                                                     "pending"]

    reprobed = load_study("block-size", preset="smoke", sets={"axes.model.block_size": [1, 2], "probe.epochs": 2},
                          seeds=2)
    assert [s.config_hash for s in reprobed.expand()] == [s.config_hash for s in study.expand()]
    plan = make_plan(reprobed, tmp_path)
    assert plan.reprobe == (k1.config_hash,) and plan.reused == ()


def test_status_and_report_agree_on_every_trial(tmp_path: Path) -> None:
    """Finished, failed, interrupted (killed driver) and pending trials, read by `xtra study status`'s
    state module and by the report's collector."""
    from xtra.reports.collect import collect_results as collect

    study = load_study("block-size", preset="smoke", seeds=3)
    specs = study.expand()
    _fake_trial(tmp_path, specs[0], finished=True)
    _fake_trial(tmp_path, specs[1], started=True)
    failed = _fake_trial(tmp_path, specs[2], started=True)
    td.record_attempt(failed, "error", error="RuntimeError: boom")
    (tmp_path / st.STUDY_TOML).write_text(study.to_toml())
    mine = {s.config_hash: s.status for s in make_plan(study, tmp_path).states}
    assert sorted(mine.values()) == ["failed", "finished", "interrupted", "pending", "pending", "pending"]
    theirs = {r["config_hash"]: r["status"] for r in collect(tmp_path).results.to_dicts()}
    assert {h: theirs[h] for h in theirs} == {h: mine[h] for h in theirs}
    assert set(theirs) == {specs[i].config_hash for i in range(3)}  # pending trials have no directory yet


def test_migration_renames_old_identity_directories(tmp_path: Path) -> None:
    study = load_study("block-size", preset="smoke")
    spec = study.expand()[0]
    run = _fake_trial(tmp_path, spec, finished=True)
    old = run.with_name("0123456789ab")  # an old, path-dependent hash
    os.replace(run, old)
    assert st.migrate(tmp_path) == [("0123456789ab", spec.config_hash)]
    assert td.read_result(td.path(tmp_path, spec.config_hash)) is not None
    assert json.loads((td.path(tmp_path, spec.config_hash) / td.PARAMS).read_text())["migrated_from"] == old.name


def test_a_missing_probe_dataset_fails_before_any_work(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["run", "block-size", "-p", "smoke", "--out", str(tmp_path / "o"),
                                   "--set", 'probe.datasets=["fashion-mnist", "imagefolder:/nope"]'])
    assert res.exit_code == 2 and "probe.datasets[1]='imagefolder:/nope'" in res.output
    assert not (tmp_path / "o").exists()
