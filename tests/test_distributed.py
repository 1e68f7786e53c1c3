"""Data-parallel pretraining: N workers x b/N against 1 worker x b, a worker killed mid-run, and a
study whose trials each run on 2 Ray Train workers (CPU, gloo, real Ray, real Fashion-MNIST).

Equivalence, measured on the `tiny` model over 24 steps: 2 workers x 16 images are *bitwise* equal
to 1 worker x 32 images in 2 accumulated micro-batches of 16 (the same micro-batch computations;
scaling by 1/2 is exact and a sum of two gradients does not depend on order), and equal up to
float reduction order to 1 worker x 32 in one micro-batch: losses within 1e-6 relative (measured
~8e-8), parameters within 1e-4 of each tensor's largest entry (measured 8e-6). 2 workers x 2
micro-batches (DDP's no_sync on the first) against 1 worker x 4 micro-batches: the same bounds
(measured 7e-8 and 1.4e-5).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import faults
import polars as pl
import pytest
import torch
from drivers import driver_env

from xtra import studydir as st
from xtra.config import SIZES, TrialConfig
from xtra.distributed import World, spawn
from xtra.overrides import override
from xtra.studies.load import load_study
from xtra.studies.spec import StudyError

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
TIMEOUT = 300
LOSS_RTOL = 1e-6
PARAM_TOL = 1e-4  # max |difference| / max |entry|, per tensor

needs_data = pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")

# One run: tiny model, 24 steps of 32 images, a checkpoint every 8 steps, every step logged.
RUN = {"data.name": "fashion-mnist", "data.limit_train": 2000, "model.block_size": 1, "pretrain.samples": 768,
       "pretrain.batch_size": 32, "pretrain.warmup_samples": 64, "pretrain.checkpoint_every": 256,
       "pretrain.log_every": 1}


def run_config(accumulate: int = 1) -> TrialConfig:
    updates = {f"model.{k}": v for k, v in SIZES["tiny"].items()}
    return override(TrialConfig(), {**updates, **RUN, "pretrain.accumulate": accumulate})


def _pretrain(world: World, cfg: TrialConfig, out: str) -> float:
    from xtra.pretrain import pretrain

    return pretrain(cfg.model, cfg.data, cfg.pretrain, Path(out), seed=cfg.seed, world=world)["train_loss"]


def losses(run: Path) -> list[float]:
    return [row["loss"] for row in st.read_jsonl(run / "metrics.jsonl")]


def params(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def max_rel(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) == 24
    return max(abs(x - y) / abs(x) for x, y in zip(a, b))


def param_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """1 worker with 1, 2 and 4 micro-batches (here, one thread like each worker), 2 workers with 1 and 2."""
    if not FASHION.is_dir():
        pytest.skip("Fashion-MNIST is not installed")
    root = tmp_path_factory.mktemp("dp")
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for acc in (1, 2, 4):
            out[f"1x{acc}"] = root / f"1x{acc}"
            _pretrain(World(), run_config(acc), str(out[f"1x{acc}"]))
    finally:
        torch.set_num_threads(threads)
    for acc in (1, 2):
        out[f"2x{acc}"] = root / f"2x{acc}"
        spawn(_pretrain, 2, run_config(acc), str(out[f"2x{acc}"]))
    return out


# ---------------------------------------------------------------------------------------------
# Fast: no Ray


def test_single_process_world_is_a_no_op() -> None:
    w = World()
    t = torch.tensor([1.0, float("nan")])
    assert w.main and not w.distributed
    assert w.all_reduce_mean(t) is t and w.all_true(False) is False and w.broadcast_object({"a": 1}) == {"a": 1}
    w.barrier()
    with pytest.raises(ValueError, match="initialized torch.distributed"):
        World(rank=1, size=2)


def test_train_step_syncs_gradients_on_the_last_micro_batch_only() -> None:
    from xtra.config import PretrainConfig
    from xtra.pretrain import train_step

    class Counting(torch.nn.Module):  # stands in for DistributedDataParallel
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))
            self.calls: list[bool] = []  # per forward: inside no_sync?
            self._deferred = False

        @contextlib.contextmanager
        def no_sync(self):
            self._deferred = True
            try:
                yield
            finally:
                self._deferred = False

        def forward(self, x, order_index):
            self.calls.append(self._deferred)
            return (x.flatten(1)[:, :3] * self.w).pow(2).mean()

    m = Counting()
    opt = torch.optim.AdamW([m.w], lr=1e-3)
    train_step(m, opt, torch.randn(8, 1, 2, 2), 0, 1e-3, PretrainConfig(batch_size=8, accumulate=4))
    assert m.calls == [True, True, True, False]


def test_workers_split_the_batch_evenly_or_fail_in_one_line(tmp_path: Path) -> None:
    study = load_study("block-size", preset="smoke")
    assert study.resources.workers == 1
    assert study.with_resources(workers_per_trial=2).resources.workers == 2
    assert study.with_resources(gpus_per_trial=4).resources.workers == 4  # one worker per GPU by default
    assert study.with_resources(gpus_per_trial=0.5).resources.workers == 1
    with pytest.raises(StudyError, match=r"resources.workers_per_trial=3: pretrain.batch_size=64 is not divisible "
                                         r"by workers x pretrain.accumulate = 3 x 1"):
        study.with_resources(workers_per_trial=3)
    with pytest.raises(StudyError, match="not a whole number of GPUs for each of workers_per_trial=2"):
        load_study("block-size", preset="smoke", sets={"resources.gpus_per_trial": 1,
                                                       "resources.workers_per_trial": 2})
    again = load_study("block-size", preset="smoke", sets={"resources.workers_per_trial": 2})
    path = tmp_path / "study.toml"
    path.write_text(again.to_toml())
    assert load_study(path).resources == again.resources
    from typer.testing import CliRunner

    from xtra.cli.main import app

    res = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "p"), "--size", "tiny", "--block-size", "1",
                                   "--workers", "3", "--set", "pretrain.batch_size=64"])
    assert res.exit_code == 2 and "not divisible by --workers x pretrain.accumulate = 3 x 1" in res.output


def _resume_when_rank1_cannot_read(world: World, run_dir: str) -> tuple[int, int, float]:
    import xtra.pretrain as xp
    from xtra.checkpoint import CheckpointError

    if world.rank == 1:  # another node: no such file on its disk
        def unreadable(*args, **kwargs):
            raise CheckpointError("not here")

        xp.load_checkpoint = unreadable
    state = xp._resume_state(Path(run_dir) / "checkpoint.pt", torch.device("cpu"), world)
    return state["step"], state["samples_seen"], float(next(iter(state["model"].values())).sum())


@pytest.mark.slow
@needs_data
def test_a_rank_without_the_checkpoint_gets_rank_0s(runs: dict[str, Path]) -> None:
    got = spawn(_resume_when_rank1_cannot_read, 2, str(runs["2x1"]))
    assert got[0] == got[1] and got[0][:2] == (24, 768)


def _pretrain_with_nan(world: World, cfg: TrialConfig, out: str) -> str:
    from faults import NanAt

    from xtra.pretrain import NonFiniteLoss, pretrain

    hooks = [NanAt(64)] if world.rank == 1 else []  # one rank goes bad
    try:
        pretrain(cfg.model, cfg.data, cfg.pretrain, Path(out), seed=cfg.seed, world=world, hooks=hooks)
    except NonFiniteLoss as err:
        return str(err)
    return "finished"


@pytest.mark.slow
@needs_data
def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    cfg = override(run_config(), {"pretrain.log_every": 4})
    got = spawn(_pretrain_with_nan, 2, cfg, str(tmp_path / "nan"))
    assert got[0] == got[1] and got[0].startswith("non-finite loss (nan) at step 3 (96 samples seen)"), got
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


def _pretrain_stopped_by_rank_1(world: World, cfg: TrialConfig, out: str) -> int:
    from xtra.pretrain import Preempted, pretrain

    asked = []

    def should_stop() -> bool:  # only rank 1 hears the stop flag, at its second log window
        asked.append(1)
        return world.rank == 1 and len(asked) >= 2

    try:
        pretrain(cfg.model, cfg.data, cfg.pretrain, Path(out), seed=cfg.seed, world=world, should_stop=should_stop)
    except Preempted as err:
        return err.samples_seen
    return -1


@pytest.mark.slow
@needs_data
def test_a_stop_heard_by_one_rank_checkpoints_every_rank_at_one_step(runs: dict[str, Path], tmp_path: Path) -> None:
    """The Slurm warning's stop flag may reach ranks at different moments: they agree through one
    collective, so every rank stops at the same step, and the resumed run equals an uninterrupted one."""
    out = tmp_path / "stopped"
    assert spawn(_pretrain_stopped_by_rank_1, 2, run_config(), str(out)) == [64, 64]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["samples_seen"] == 64
    spawn(_pretrain, 2, run_config(), str(out))
    assert losses(out) == losses(runs["2x1"])
    assert all(torch.equal(params(out)[k], v) for k, v in params(runs["2x1"]).items())


@pytest.mark.slow
@needs_data
def test_two_workers_follow_one_worker(runs: dict[str, Path]) -> None:
    two, one = losses(runs["2x1"]), losses(runs["1x1"])
    # 2 x b/2 is the same computation as 1 x b in two micro-batches: exact.
    assert two == losses(runs["1x2"])
    p2 = params(runs["2x1"])
    assert all(torch.equal(p2[k], v) for k, v in params(runs["1x2"]).items())
    # ... and 1 x b in one micro-batch up to float reduction order
    assert max_rel(one, two) < LOSS_RTOL, max_rel(one, two)
    assert param_gap(params(runs["1x1"]), p2) < PARAM_TOL
    assert two[-1] < two[0]  # and it learns
    # Accumulation composes with DDP (no_sync on all but the last micro-batch).
    assert max_rel(losses(runs["1x4"]), losses(runs["2x2"])) < LOSS_RTOL
    assert param_gap(params(runs["1x4"]), params(runs["2x2"])) < PARAM_TOL
    assert torch.load(runs["2x1"] / "checkpoint.pt", weights_only=True)["world_size"] == 2


# ---------------------------------------------------------------------------------------------
# Slow: real Ray


def xtra(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xtra.cli.main", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True,
                          timeout=TIMEOUT)


@pytest.mark.slow
@needs_data
def test_study_with_two_workers_per_trial(tmp_path: Path) -> None:
    """A smoke block-size trial on 2 workers (2 x 32 images of the global 64), one of them killed
    once mid-run: Ray Train restarts the worker group from its last checkpoint, it finishes bitwise
    where an uninterrupted 2-worker run of the same config ends, probes, and its row and curve feed
    results.parquet like any other (the report reads only those, tested elsewhere)."""
    study_dir = tmp_path / "study"
    proc = xtra("study", "run", "block-size", "--preset", "smoke", "--workers-per-trial", "2", "--set",
                "axes.model.block_size=[2]", "--out", str(study_dir), "--no-report", "--logger", "none",
                env=driver_env(**faults.env(KILL_WORKER="model.block_size=2@128")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    df = pl.read_parquet(study_dir / st.RESULTS)
    assert df.height == 1
    row = df.to_dicts()[0]
    assert row["status"] == "finished" and row["error"] is None and row["samples_seen"] == 512
    assert 0.0 < row["linear_top1"] <= 1.0 and 0.0 < row["attentive_top1"] <= 1.0 and row["block_size"] == 2
    assert row["attempts"] == 1  # Ray Train restarted the workers; Tune never saw a failure
    run = st.trial_dir(study_dir, row["config_hash"])
    starts = st.read_jsonl(run / "workers.jsonl")
    assert [s["world_size"] for s in starts] == [2, 2] and starts[1]["checkpoint_samples"] >= 128
    assert "resumed from" in (run / "log.txt").read_text()
    trial = json.loads((run / "trial.json").read_text())
    assert trial["workers"] == 2 and trial["samples_seen"] == 512
    curves = pl.read_parquet(study_dir / st.CURVES)
    assert curves["samples_seen"].max() == 512 and curves["step"].n_unique() == curves.height
    written = load_study(study_dir)
    assert written.resources.workers == 2
    (spec,) = written.expand()
    spawn(_pretrain, 2, spec.config, str(tmp_path / "uninterrupted"))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(state["model"][k], v) for k, v in params(tmp_path / "uninterrupted").items())
