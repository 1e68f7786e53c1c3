"""Scaling laws in the report: a law is stated only when the data identify one, held-out runs are
marked and predicted, no frontier comes from a non-law, and axes follow the data, not the bands.
Checked in the written page and, where it matters, in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import plotly.io as pio
import polars as pl
import pytest
from test_reports import dump_dom, figures_in, md_table, needs_chromium, skipped_in

from xtra.reports.build import build_report
from xtra.reports.calibration.synthetic import TRUE_LAW, make_study
from xtra.reports.collect import collect_results
from xtra.reports.law_panels import loss_scaling
from xtra.reports.scaling import FORMS_2D
from xtra.reports.tables import SAMPLE_KEYS

N_BOOT = 20
SCALING_FIGURES = ("compute", "loss-vs-samples", "loss-vs-params", "learning-curve-laws", "isoflop")


def figure_json(page: str, fid: str) -> dict:
    spec = re.search(rf'<script type="application/json" id="fig-{fid}-json">(.*?)</script>', page, re.S)
    assert spec, fid
    return json.loads(spec.group(1).replace("<\\/", "</"))


def laws_in(page: str) -> list[tuple[str, str]]:
    return re.findall(r'<li data-law="([^"]+)"><b>[^<]*</b>: ([^<]*)</li>', page)


def values(v: object) -> np.ndarray:
    """A trace's x or y: a list, or plotly's typed array {"dtype": ..., "bdata": base64}."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).astype(float)
    return np.asarray([np.nan if x is None else x for x in (v or [])], dtype=float)


def marker_ys(fig: dict) -> np.ndarray:
    """Every y of the marker traces (the runs), the data an axis must show."""
    ys = np.concatenate([values(t.get("y")) for t in fig["data"] if t.get("mode") == "markers"])
    return ys[np.isfinite(ys)]


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's 3 x 3 tiny study: widths 16/32/64 x 512/1,024/2,048 samples, a loss that does not
    move beyond noise; learning curves of five noisy rows."""
    root = make_study(tmp_path_factory.mktemp("flat") / "study", name="tiny3x3", block_sizes=(1,),
                      widths=(16, 32, 64), samples=(512, 1024, 2048), n_curve_rows=5, depth=2)
    rng = np.random.default_rng(7)
    res = pl.read_parquet(root / "results.parquet")
    loss = 0.6 * np.exp(rng.normal(0.0, 0.03, res.height))
    res.with_columns(pl.Series("train_loss", loss), pl.Series("val_loss", loss * 1.01)).write_parquet(
        root / "results.parquet")
    cur = pl.read_parquet(root / "curves.parquet")
    cur.with_columns(pl.Series("loss", 0.6 * np.exp(rng.normal(0.0, 0.15, cur.height)))).write_parquet(
        root / "curves.parquet")
    build_report(root, n_boot=N_BOOT)
    return root


@pytest.fixture(scope="module")
def lawful(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 widths x 5 budgets from the synthetic Chinchilla surface with 0.5% noise."""
    root = make_study(tmp_path_factory.mktemp("law") / "study", name="law", block_sizes=(4,),
                      widths=(64, 128, 256, 512), samples=(5_000, 10_000, 20_000, 40_000, 80_000), noise=0.005,
                      n_curve_rows=5)
    build_report(root, n_boot=N_BOOT)
    return root


def test_flat_study_says_no_law_and_draws_no_frontier(flat: Path) -> None:
    page = (flat / "report" / "index.html").read_text()
    md = (flat / "report" / "summary.md").read_text()
    assert "isoflop" in skipped_in(page) and "frontier" in skipped_in(page)
    assert "isoflop" not in figures_in(page) and "frontier" not in figures_in(page)
    chin = [(v, s) for v, s in laws_in(page) if s.startswith("L(N, D)")]
    assert len(chin) == 1 and chin[0][0] == "no law" and "constant" in chin[0][1], chin
    assert "- **no law**: L(N, D)" in md and "- **law**: L(N, D)" not in md
    row = md_table(md, "Law: final val loss = E + A/N^alpha + B/D^beta (or the reduced form chosen)")[0]
    assert row["verdict"] == "no law" and row["E"] == row["alpha"] == row["beta"] == "–"
    assert row["held-out error"] == "–"
    compute = figure_json(page, "compute")
    names = [t.get("name") or "" for t in compute["data"]]
    assert not any("frontier" in n or "law" in n for n in names), names
    assert not any(t.get("mode") == "lines" for t in compute["data"])
    # No law anywhere in this study (the noisy curves included): no fitted curve or band is drawn.
    assert all(v == "no law" for v, _ in laws_in(page)), laws_in(page)
    for fid in ("compute", "learning-curve-laws"):
        assert not [t for t in figure_json(page, fid)["data"] if t.get("mode") == "lines" or t.get("fill")], fid


@pytest.mark.slow
def test_law_study_states_the_law_with_held_out_runs(lawful: Path) -> None:
    page = (lawful / "report" / "index.html").read_text()
    md = (lawful / "report" / "summary.md").read_text()
    assert {"compute", "isoflop", "frontier"} <= set(figures_in(page))
    row = md_table(md, "Law: final val loss = E + A/N^alpha + B/D^beta (or the reduced form chosen)")[0]
    assert row["verdict"] == "law" and row["form"] == "full"

    def value_ci(cell: str) -> tuple[float, float, float]:
        v, lo, hi = re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell).groups()
        return float(v), float(lo), float(hi)

    for name, truth in (("alpha", TRUE_LAW["alpha"]), ("beta", TRUE_LAW["beta"])):
        v, lo, hi = value_ci(row[name])
        assert lo <= truth <= hi and abs(v - truth) < 0.05, (name, row[name])
    held = md_table(md, "Held-out prediction: L(N, D)")
    assert len(held) == 4 and {r["D"] for r in held} == {"80K"}
    errors = [abs(float(r["error"].rstrip("%"))) for r in held]
    # 0.5% noise, D extrapolated 2x from 16 runs: within 3% each, and the 95% intervals are not all missed.
    assert np.mean(errors) < 2.0 and max(errors) < 3.0 and sum(r["inside PI"] == "yes" for r in held) >= 2
    assert float(row["held-out error"].rstrip("%")) == pytest.approx(np.mean(errors), abs=0.01)
    choice = [r for r in md_table(md, "Model comparison: L(N, D)") if r[""] == "chosen"]
    assert [r["form"] for r in choice] == ["full"]
    # Held-out runs are distinct markers in the compute figure, next to their predictions.
    compute = figure_json(page, "compute")
    held_tr = [t for t in compute["data"] if t.get("name", "").endswith("held out")]
    pred_tr = [t for t in compute["data"] if "predicted" in t.get("name", "")]
    assert len(held_tr) == 1 and len(values(held_tr[0]["y"])) == 4
    assert held_tr[0]["marker"]["symbol"] != "circle" and pred_tr and len(values(pred_tr[0]["error_y"]["array"])) == 4
    frontier = [t for t in compute["data"] if "frontier" in t.get("name", "")]
    assert len(frontier) == 1
    run_x = np.concatenate([values(t["x"]) for t in compute["data"] if t.get("mode") == "markers"])
    assert values(frontier[0]["x"]).min() >= run_x.min() * 0.999  # drawn over the budgets run only
    assert values(frontier[0]["x"]).max() <= run_x.max() * 1.001


@pytest.mark.parametrize("study", ["flat", "lawful"])
def test_scaling_axes_follow_the_data(study: str, request: pytest.FixtureRequest) -> None:
    """Every scaling figure's y range is set from the runs (log axis, a modest pad): a band that
    diverges, or an extrapolated curve, cannot stretch it. The figures each study supports are all
    there (no iso-FLOP curves without a law), so a figure that vanished fails here."""
    page = (request.getfixturevalue(study) / "report" / "index.html").read_text()
    expected = [f for f in SCALING_FIGURES if study == "lawful" or f != "isoflop"]
    assert [f for f in SCALING_FIGURES if f in figures_in(page)] == expected
    for fid in expected:
        fig = figure_json(page, fid)
        lo, hi = fig["layout"]["yaxis"]["range"]
        ys = np.log10(marker_ys(fig))
        assert lo <= ys.min() and ys.max() <= hi, fid
        assert ys.min() - lo < 0.3 and hi - ys.max() < 0.3, (fid, lo, hi, ys.min(), ys.max())


def test_a_diverging_band_does_not_set_the_axis(tmp_path: Path) -> None:
    """A loosely determined law (eight budgets over four decades, 30% noise): its band leaves the data's
    range at the ends, and the axis still does not follow it."""
    root = make_study(tmp_path / "loose", name="loose", block_sizes=(4,), widths=(64,),
                      samples=tuple(int(x) for x in np.logspace(3, 7, 8)), n_curve_rows=4)
    res = pl.read_parquet(root / "results.parquet")
    s = res["samples_seen"].to_numpy().astype(float)
    loss = 5.0 * s**-0.3 * np.exp(np.random.default_rng(1).normal(0.0, 0.3, len(s)))
    res.with_columns(pl.Series("train_loss", loss), pl.Series("val_loss", loss)).write_parquet(
        root / "results.parquet")
    panel = loss_scaling(collect_results(root), "samples_seen", "samples seen", SAMPLE_KEYS, n_boot=N_BOOT)
    fig = json.loads(pio.to_json(panel.figure))  # what the page embeds
    bands = [t for t in fig["data"] if t.get("fill") == "toself"]
    assert bands, "the test needs a drawn law with a band"
    lo, hi = fig["layout"]["yaxis"]["range"]
    band_logs = np.log10(np.concatenate([values(t["y"]) for t in bands]))
    ys = np.log10(marker_ys(fig))
    assert band_logs.max() > hi or band_logs.min() < lo, "no band left the data's range: the scenario is not tested"
    assert lo <= ys.min() and ys.max() <= hi
    assert ys.min() - lo < 0.3 and hi - ys.max() < 0.3


@needs_chromium
def test_no_law_page_renders_without_a_frontier(flat: Path, tmp_path: Path) -> None:
    index = flat / "report" / "index.html"
    dom = dump_dom(index, tmp_path)
    attrs = dict(re.findall(r'(data-[\w-]+)="([^"]*)"', re.search(r"<body([^>]*)>", dom).group(1)))
    assert attrs.get("data-render-done") == "1" and attrs["data-js-errors"] == "0", attrs
    assert attrs["data-plots-expected"] == attrs["data-plots-rendered"] == str(len(figures_in(index.read_text())))
    # What a reader sees: the verdict with its reason, and no frontier or iso-FLOP curve in any plot.
    assert re.search(r'<li data-law="no law"><b>no law</b>: L\(N, D\)', dom)
    assert 'id="fig-frontier"' not in dom and 'id="fig-isoflop"' not in dom
    legend_text = " ".join(re.findall(r'<text class="legendtext"[^>]*>([^<]*)</text>', dom))
    assert legend_text and "frontier" not in legend_text and "iso" not in legend_text.lower()


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST is not installed")
def test_smoke_preset_reaches_the_l_n_d_analysis(tmp_path: Path) -> None:
    """`scaling --preset smoke` (3 tiny widths x 3 budgets, real training through Ray) has enough
    (N, D) pairs for the L(N, D) analysis, and the page is consistent with its verdict."""
    import xtra

    outcome = xtra.run_study("scaling", tmp_path / "study", preset="smoke", report=False)
    assert outcome.counts == {"finished": 9}
    page = build_report(outcome.study_dir, n_boot=N_BOOT).read_text()
    md = (outcome.study_dir / "report" / "summary.md").read_text()
    chin = [(v, s) for v, s in laws_in(page) if s.startswith("L(N, D)")]
    assert len(chin) == 1, laws_in(page)
    row = md_table(md, "Law: final val loss = E + A/N^alpha + B/D^beta (or the reduced form chosen)")[0]
    assert row["points"] == "9" and row["verdict"] == chin[0][0]
    assert len(md_table(md, "Model comparison: L(N, D)")) == len(FORMS_2D)
    if chin[0][0] == "no law":  # says why, and derives nothing from it
        assert "frontier" not in figures_in(page) and "isoflop" not in figures_in(page)
        assert len(chin[0][1]) > len("L(N, D): final val loss, all: ") + 10
    else:  # a law is checked on the largest budget's three runs
        assert len(md_table(md, "Held-out prediction: L(N, D)")) == 3


def test_laws_and_figures_use_encoder_parameters_when_only_the_encoder_scales(tmp_path: Path) -> None:
    """A width sweep whose predictor and heads do not scale (a fixed 5M beside the encoder, as in the
    paper preset): total parameters would span a fraction of the encoder's range, so the laws, the
    axes and the parameter-efficiency figure all count encoder parameters, and say so."""
    root = make_study(tmp_path / "enc", name="enc", block_sizes=(4,), widths=(64, 128, 256, 512),
                      samples=(5_000, 10_000, 20_000, 40_000), noise=0.005, n_curve_rows=4)
    res = pl.read_parquet(root / "results.parquet")
    res.with_columns((pl.col("n_params_encoder") + 5_000_000).alias("n_params")).write_parquet(
        root / "results.parquet")
    page = build_report(root, n_boot=0).read_text()
    params = figure_json(page, "loss-vs-params")
    assert params["layout"]["xaxis"]["title"]["text"] == "encoder parameters"
    xs = np.concatenate([values(t["x"]) for t in params["data"] if t.get("mode") == "markers"])
    assert set(xs) <= set(res["n_params_encoder"].cast(pl.Float64).to_list())
    assert figure_json(page, "param-efficiency")["layout"]["xaxis"]["title"]["text"] == "encoder parameters"
    md = (root / "report" / "summary.md").read_text()
    # the compute is the trials' own FLOPs per image, affine in N (the fixed 5M do not scale with it)
    assert "N = encoder parameters" in md and "C = D·(fixed + per_param·N)" in md


def test_a_wsd_learning_curve_law_is_fitted_within_its_stable_phase() -> None:
    """Warmup (lr rising), stable (lr at its peak), cooldown (lr decaying): the law is fitted and its tail
    held out within the stable phase, so the check does not test the schedule's cooldown (issue #33)."""
    from xtra.reports.law_panels import stable_phase

    lr = [1e-4, 5e-4, 1e-3] + [1e-3] * 8 + [6e-4, 2e-4, 0.0]
    curve = pl.DataFrame({"samples_seen": [1000 * (i + 1) for i in range(len(lr))], "loss": [1.0] * len(lr),
                          "lr": lr})
    stable = stable_phase(curve)
    assert stable is not None and stable["samples_seen"].to_list() == [3000 + 1000 * i for i in range(9)]
    assert stable_phase(curve.drop("lr")) is None  # no lr logged: the cosine-style warmup cut applies
