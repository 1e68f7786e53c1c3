"""Real Ray, real Fashion-MNIST (smoke preset): the Python API, experiment trackers read back offline,
Optuna's SQLite storage, a report built from a real runner's output, and a moved study that reruns
nothing."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from drivers import driver_env

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")]


def _xtra(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xtra.cli.main", *args], cwd=ROOT, env=driver_env(),
                          capture_output=True, text=True, timeout=timeout)


def _tfrecords(path: Path) -> list[bytes]:
    """The records of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    data, out, i = path.read_bytes(), [], 0
    while i + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        out.append(data[i + 12:i + 12 + n])
        i += 12 + n + 4
    return out


def _scalar_tags(event_file: Path) -> set[str]:
    from tensorboardX.proto import event_pb2

    tags = set()
    for rec in _tfrecords(event_file):
        ev = event_pb2.Event()
        ev.ParseFromString(rec)
        tags.update(v.tag for v in ev.summary.value)
    return tags


@pytest.fixture(scope="module")
def api_run(tmp_path_factory: pytest.TempPathFactory):
    """One smoke trial through the Python API, with all three trackers and the report."""
    import xtra

    out = tmp_path_factory.mktemp("api") / "study"
    env_before = dict(os.environ)
    fd2_before = os.fstat(2)
    outcome = xtra.run_study("block-size", out, preset="smoke", sets={"axes.model.block_size": [1]},
                             loggers=["tensorboard", "mlflow", "wandb"])
    assert dict(os.environ) == env_before, "run_study changed the process environment"
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (fd2_before.st_dev, fd2_before.st_ino), "stderr was left redirected"
    return outcome


def test_python_api_runs_a_study_and_loads_its_results(api_run) -> None:
    import xtra

    assert api_run.counts == {"finished": 1}
    df = xtra.load_results(api_run.study_dir)
    assert isinstance(df, pl.DataFrame) and df.height == 1 and df["status"].to_list() == ["finished"]
    stored = pl.read_parquet(api_run.study_dir / "results.parquet")
    assert df["linear_top1"].to_list() == stored["linear_top1"].to_list() and 0 < df["linear_top1"][0] <= 1
    assert xtra.load_curves(api_run.study_dir)["samples_seen"].max() == 512


def test_the_report_is_built_from_the_real_runners_output(api_run) -> None:
    report = api_run.report
    assert report is not None and report.name == "index.html", api_run.notes
    html = report.read_text()
    row = pl.read_parquet(api_run.study_dir / "results.parquet").row(0, named=True)
    assert "block-size" in html and f"{100 * row['linear_top1']:.1f}" in (report.parent / "summary.md").read_text()
    mode = report.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask, oct(mode)  # readable as the umask says, so it can be served


def test_trackers_log_config_and_metrics_offline(api_run) -> None:
    study_dir = api_run.study_dir
    events = sorted(study_dir.glob("run-*/trial-*/events.out.tfevents*"))
    assert events, sorted(p.relative_to(study_dir).as_posix() for p in study_dir.rglob("*"))[:50]
    tags = set().union(*(_scalar_tags(e) for e in events))
    assert {"ray/tune/loss", "ray/tune/samples_seen", "ray/tune/linear_top1"} <= tags, sorted(tags)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(study_dir / 'trackers' / 'mlflow' / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name("block-size")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["trial/config/model/block_size"] == "1"
    history = client.get_metric_history(run.info.run_id, "samples_seen")
    assert [m.value for m in history][-1] == 512 and len(history) >= 2
    assert 0 < run.data.metrics["linear_top1"] <= 1

    offline = sorted((study_dir / "trackers" / "wandb").rglob("offline-run-*"))
    assert offline, "no W&B offline run"
    assert any(p.suffix == ".wandb" and p.stat().st_size > 0 for p in offline[0].iterdir())


def test_optuna_state_lives_in_sqlite(tmp_path: Path) -> None:
    import optuna

    study_dir = tmp_path / "search"
    proc = _xtra("study", "run", "lr-search", "--preset", "smoke", "--out", str(study_dir), "--no-report",
                 "--logger", "none")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stored = optuna.load_study(study_name="lr-search", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    done = [t for t in stored.trials if t.state == optuna.trial.TrialState.COMPLETE]
    df = pl.read_parquet(study_dir / "results.parquet")
    assert len(done) == df.height == 2
    lrs = [next(v for k, v in t.params.items() if k.endswith("pretrain.lr")) for t in done]  # Ray nests the space
    assert sorted(lrs) == sorted(df["pretrain.lr"].to_list())
    assert sorted(t.value for t in done) == pytest.approx(sorted(df["linear_top1"].to_list()))
    # the sampled points are inside the search space, distinct, and each trial finished with its probe
    assert set(df["status"]) == {"finished"} and {"pretrain.lr", "pretrain.warmup_samples"} <= set(df.columns)
    assert all(1e-4 <= lr <= 3e-3 for lr in df["pretrain.lr"])
    assert all(0 <= w <= 256 for w in df["pretrain.warmup_samples"])
    assert df["config_hash"].n_unique() == 2 and (df["linear_top1"] > 0).all()


def test_a_moved_study_with_its_data_elsewhere_reruns_nothing(api_run, tmp_path: Path) -> None:
    moved = tmp_path / "moved" / "study"
    shutil.copytree(api_run.study_dir, moved)
    data = tmp_path / "data" / "fashion-mnist"
    shutil.copytree(FASHION, data)
    proc = _xtra("study", "run", str(moved), "--set", f"data.root={data}", "--no-report", "--logger", "none")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(ran 0, reused 1 finished)" in proc.stdout, proc.stdout
    starts = [line for line in (next((moved / "trials").iterdir()) / "attempts.jsonl").read_text().splitlines()
              if '"start"' in line]
    assert len(starts) == 1


def test_a_resumed_search_does_not_replay_the_first_runs_points(tmp_path: Path) -> None:
    """The sampler's seed moves on with the trials optuna.db holds: a resumed search's first suggestion
    is not the first run's first point again, while a fresh search with the same seed repeats it."""
    from xtra.studies.load import load_study
    from xtra.studies.ray.tuner import _optuna_searcher, _search_space

    study = load_study("lr-search", preset="smoke")
    space = {"params": _search_space(study)}

    def searcher(study_dir: Path):  # noqa: ANN202
        study_dir.mkdir(exist_ok=True)
        s = _optuna_searcher(study, study_dir, ())
        s.set_search_properties(None, None, space)
        return s

    first = searcher(tmp_path / "a")
    point = first.suggest("t0")
    first.on_trial_complete("t0", {study.search.metric: 0.5})
    assert searcher(tmp_path / "b").suggest("u0") == point  # same seed, same first point
    assert searcher(tmp_path / "a").suggest("t1") != point  # resumed: onward, not the first point again
