"""The report's evaluation: probe curves along pretraining, the paper's sample-efficiency ratio, the
downstream suite table, on a synthetic study written through xtra.trialdir like a real one."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from xtra.reports.build import build_report
from xtra.reports.calibration.synthetic import make_study
from xtra.reports.collect import collect_results
from xtra.reports.evaluation import evaluation

BUDGETS = (5000, 10000, 20000, 40000)


def test_sample_efficiency_comes_from_completed_budgets_and_checkpoints_are_learning_curves(tmp_path: Path) -> None:
    root = make_study(tmp_path / "s", block_sizes=(1, 2, 4), seeds=(0, 1, 2), samples=BUDGETS,
                      probe_points=(0.25, 0.5, 0.75), layout="both", n_curve_rows=5)
    study = collect_results(root)
    assert study.probes.height == 3 * 3 * 4 * 4 * 2  # trials x checkpoints x kinds
    from_trials = collect_results(make_study(tmp_path / "t", block_sizes=(1, 2, 4), seeds=(0, 1, 2), samples=BUDGETS,
                                        probe_points=(0.25, 0.5, 0.75), layout="trials", n_curve_rows=5))
    cols = ["config_hash", "samples", "kind", "top1"]
    assert study.probes.select(cols).sort(cols).equals(from_trials.probes.select(cols).sort(cols))

    panels, tables, sentences = evaluation(study)
    linear = next(p for p in panels if p.id == "probe-curves-linear")
    # one line per trial (36), never a mean across trials; labelled as learning curves, no ratio from them
    assert linear.figure is not None and len([t for t in linear.figure.data if t.mode == "lines+markers"]) == 36
    assert linear.title.startswith("Learning curves") and "no sample-efficiency ratio is read" in linear.note
    assert tables == []  # one probe dataset: no suite table
    # synthetic k=2 and k=4 have a lower loss at every budget: both reach k=1's top-1 at 40,000 samples with
    # fewer samples; the ratio comes from the trials of the four budgets, with censored CIs over 3 seeds
    by_k = {int(m.group(1)): m.group(0) for m in (re.match(r"k=(\d) reaches k=1's linear top-1 \(.* at 40,000 "
                                                             r"samples\).*", s) for s in sentences) if m}
    assert set(by_k) == {2, 4}, sentences
    assert all("fewer samples (95% CI" in s and "3 seeds" in s and s.endswith("(completed budgets)")
               for s in by_k.values()), sentences

    index = build_report(root, n_boot=0)
    html = index.read_text()
    assert 'data-figure="probe-curves-linear"' in html
    summary = (index.parent / "summary.md").read_text()
    assert "Efficiency: k=2 reaches k=1's linear top-1" in summary


def test_checkpoints_of_one_budget_give_no_sample_ratio(tmp_path: Path) -> None:
    """Probe points along one cosine run per trial (the old cpu preset): learning curves, and no ratio."""
    root = make_study(tmp_path / "s", block_sizes=(1, 2, 4), seeds=(0, 1), probe_points=(0.25, 0.5, 0.75),
                      n_curve_rows=5)
    panels, _, sentences = evaluation(collect_results(root))
    assert next(p for p in panels if p.id == "probe-curves-linear").figure is not None
    assert not [s for s in sentences if "fewer samples" in s or "never reaches" in s], sentences


def test_one_seed_claims_no_band_no_error_bars_and_no_law_for_a_cosine_tail(tmp_path: Path) -> None:
    """With one seed the figures say there is no spread to show, and a cosine run's learning-curve
    fit is counted as a descriptive fit, not a law."""
    root = make_study(tmp_path / "s", block_sizes=(1, 2, 4), samples=(10000, 40000), probe_points=(0.5,),
                      n_curve_rows=20)
    index = build_report(root, n_boot=0)
    html = index.read_text()
    assert re.search(r"k=2 reaches k=1&#x27;s linear top-1 [^<]*\(one seed: no CI\)", html)
    assert "One seed: no error bars." in html and "Error bars: 95% t-interval" not in html
    assert "0 of 6 fitted group(s) hold a law, 6 give a descriptive fit." in html


def test_a_suite_gets_a_per_dataset_table_with_its_average(tmp_path: Path) -> None:
    root = make_study(tmp_path / "s", block_sizes=(1, 2), probe_points=(0.5,), layout="parquet", n_curve_rows=5)
    probes = pl.read_parquet(root / "probes.parquet")
    other = probes.with_columns(pl.lit("digits").alias("dataset"), (pl.col("top1") - 0.1).alias("top1"))
    pl.concat([probes, other]).write_parquet(root / "probes.parquet")
    _, tables, _ = evaluation(collect_results(root))
    linear = next(t for t in tables if t.id == "table-suite-linear")
    assert sorted(linear.columns) == ["average", "digits", "fashion-mnist", "trial_id"]
    for row in linear.rows:
        cells = dict(zip(linear.columns, row))
        digits, fashion, average = (float(cells[c]) for c in ("digits", "fashion-mnist", "average"))
        assert abs(average - (digits + fashion) / 2) < 0.051  # shown to one decimal of a percent


def test_wsd_vs_cosine_per_budget_is_paired_by_seed() -> None:
    from xtra.reports.evaluation import schedule_comparison

    rows = []
    for seed in (0, 1, 2):
        for samples in (4000, 8000):
            base = 0.6 - samples / 1e5 + 0.01 * seed
            rows.append({"pretrain.schedule": "cosine", "pretrain.samples": samples, "seed": seed,
                         "val_loss": base, "linear_top1": 0.7})
            rows.append({"pretrain.schedule": "wsd", "pretrain.samples": samples, "seed": seed,
                         "val_loss": base - 0.02 - 0.001 * seed, "linear_top1": 0.71})
    df = schedule_comparison(pl.DataFrame(rows))
    assert df["pretrain.samples"].to_list() == [4000, 8000] and df["seeds"].to_list() == [3, 3]
    for r in df.iter_rows(named=True):  # the seed offset cancels in the pairing: delta -0.021, a tight CI
        assert abs(r["val_loss delta"] + 0.021) < 1e-9 and r["val_loss lo"] < -0.021 < r["val_loss hi"]
        assert abs(r["linear_top1 delta"] - 0.01) < 1e-9
    assert schedule_comparison(pl.DataFrame([r for r in rows if r["pretrain.schedule"] == "wsd"])).is_empty()


def test_a_probe_still_improving_at_its_last_epoch_is_flagged(tmp_path: Path) -> None:
    root = make_study(tmp_path / "s", block_sizes=(1, 2), probe_points=(0.5,), layout="parquet", n_curve_rows=5)
    assert not any("Still improving" in s for s in evaluation(collect_results(root))[2])
    probes = pl.read_parquet(root / "probes.parquet")
    last = pl.col("samples") == pl.col("samples").max().over("config_hash")
    flag = (pl.col("kind") == "attentive") & last & (pl.col("config_hash") == probes["config_hash"][0])
    probes.with_columns(pl.when(flag).then(True).otherwise(pl.col("still_improving")).alias("still_improving")) \
        .write_parquet(root / "probes.parquet")
    study = collect_results(root)
    (said,) = [s for s in evaluation(study)[2] if "Still improving" in s]
    trial = study.finished.filter(pl.col("config_hash") == probes["config_hash"][0])["trial_id"][0]
    assert f"attentive on fashion-mnist of {trial} (" in said and said.count(" of ") == 1, said
    summary = (build_report(root, n_boot=0).parent / "summary.md").read_text()
    assert "Still improving: a longer probe schedule scored" in summary
