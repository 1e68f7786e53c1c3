"""The paper's evaluation in the report: probe top-1 along pretraining (from the checkpoints each
trial keeps), the "X x fewer samples" / "X x fewer parameters" ratios with bootstrap CIs, and the
downstream suite's per-dataset table with its average. Numbers come from ``reports.efficiency``;
this module only turns a collected study into panels, tables and sentences."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl

from . import efficiency as eff
from .collect import Study
from .figures import Panel, _layout, several_seeds
from .tables import Table, mean_ci

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _probe_rows(study: Study) -> pl.DataFrame:
    """Probe rows of finished trials joined with the size columns they are grouped by."""
    rows = study.probes
    if rows.is_empty() or "top1" not in rows.columns:
        return pl.DataFrame()
    keep = [c for c in ("config_hash", "block_size", "n_params", "n_params_encoder", "seed", "trial_id")
            if c in study.finished.columns]
    sizes = study.finished.select(keep).unique("config_hash")
    if "block_size" in sizes.columns:  # results hold metrics as floats; k names a curve
        sizes = sizes.with_columns(pl.col("block_size").cast(pl.Int64))
    drop = [c for c in keep if c != "config_hash" and c in rows.columns]
    return rows.drop(drop).join(sizes, on="config_hash", how="inner").filter(pl.col("top1").is_not_null())


def _own_dataset(rows: pl.DataFrame) -> str | None:
    names = rows["dataset"].unique().to_list() if "dataset" in rows.columns else []
    return names[0] if len(names) == 1 else None


def sample_efficiency_from_checkpoints(study: Study, kind: str = "linear") -> tuple[Panel, list[str]]:
    """Top-1 vs samples seen, one line per k (mean over seeds, 95% band), from each trial's probed
    checkpoints; and the 'k reaches k=1 with X x fewer samples' sentences."""
    pid, title = f"probe-curves-{kind}", f"Sample efficiency from checkpoints: {kind} top-1 vs samples seen"
    rows = _probe_rows(study)
    if rows.is_empty():
        return Panel(pid, title, note="Skipped: no probe results along pretraining (set probe.points or "
                                      "probe.at_samples)."), []
    rows = rows.filter(pl.col("kind") == kind)
    if rows.is_empty():  # e.g. probe.kinds = ["linear"]: no attentive rows
        return Panel(pid, title, note=f"Skipped: no {kind} probe results along pretraining."), []
    datasets = sorted(rows["dataset"].unique().to_list())
    dataset = study.base.get("data.name") if study.base.get("data.name") in datasets else datasets[0]
    rows = rows.filter(pl.col("dataset") == dataset)
    if rows.is_empty() or rows.group_by("config_hash").agg(pl.col("samples").n_unique()).get_column(
            "samples").max() < 2:
        return Panel(pid, title, note="Skipped: each trial was probed at its end only (set probe.points or "
                                      "probe.at_samples to probe along pretraining)."), []
    curves = eff.sample_curves(rows, kind=kind, dataset=dataset)
    fig = go.Figure()
    for i, (k,) in enumerate(curves.select("block_size").unique().sort("block_size").iter_rows()):
        c = curves.filter(pl.col("block_size") == k).sort("samples")
        color = PALETTE[i % len(PALETTE)]
        x, y = c["samples"].to_list(), [100 * v for v in c["mean"].to_list()]
        if c["lo"].null_count() == 0:  # a band only where every point has one (several seeds)
            lo = [100 * v if v is not None else None for v in c["lo"].to_list()]
            hi = [100 * v if v is not None else None for v in c["hi"].to_list()]
            fig.add_trace(go.Scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", fillcolor=color, opacity=0.15,
                                     line=dict(width=0), hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"k={k}", line=dict(color=color)))
    _layout(fig, title, "samples seen", f"{kind} top-1 (%) on {dataset}", logx=True)
    sentences: list[str] = []
    ks = rows["block_size"].unique().to_list()
    if 1 in ks and len(ks) > 1:
        ratios = eff.sample_efficiency(rows, kind=kind, dataset=dataset, baseline=1, n_boot=1000)
        sentences = eff.ratio_sentences(ratios, what="samples", kind=kind)
    spread = "Mean over seeds with a 95% band; " if several_seeds(rows) else "One seed: no band; "
    said = " ".join(f"{s}." for s in sentences) if sentences else "no ratio: k=1 and another k are both needed."
    note = spread + said
    return Panel(pid, title, fig, note=note), sentences


def parameter_ratios(study: Study, kind: str = "linear") -> list[str]:
    """'X x fewer parameters' from a width sweep (several encoder sizes per k, k=1 among them)."""
    res = study.finished
    if "block_size" in res.columns:
        res = res.with_columns(pl.col("block_size").cast(pl.Int64))
    col = f"{kind}_top1"
    if col not in res.columns or "block_size" not in res.columns or res.is_empty():
        return []
    per_k = res.group_by("block_size").agg(pl.col("n_params_encoder").n_unique().alias("sizes"))
    if 1 not in per_k["block_size"].to_list() or per_k["sizes"].min() < 2 or per_k.height < 2:
        return []
    ratios = eff.parameter_efficiency(res.filter(pl.col(col).is_not_null()), kind=kind, baseline=1, n_boot=1000)
    return eff.ratio_sentences(ratios, what="encoder parameters", kind=kind)


def suite_tables(study: Study) -> list[Table]:
    """With several probe datasets: one table per kind, a row per trial, a column per dataset + average."""
    rows = _probe_rows(study)
    if rows.is_empty() or rows["dataset"].n_unique() < 2:
        return []
    out = []
    for kind in sorted(rows["kind"].unique().to_list()):
        table = eff.suite_table(rows, label="trial_id", kind=kind)
        columns = table.columns
        body = [[eff._cell(r[c], c != "trial_id") for c in columns] for r in table.iter_rows(named=True)]
        out.append(Table(title=f"Downstream suite: {kind} top-1 (%) per dataset and average", columns=columns,
                         rows=body, id=f"table-suite-{kind}",
                         note="At each trial's last checkpoint; the average is over every dataset of the suite "
                              "(empty when a dataset is missing, never a mean over fewer sets)."))
    return out


def wsd_samples(study: Study) -> list[str]:
    """For a study whose trials branch off wsd trunks: the samples it trained against running every
    budget on its own (each trunk counted once, to its deepest branch start)."""
    res = study.finished
    if "trunk" not in res.columns or res["trunk"].null_count() == res.height:
        return []
    branches = res.filter(pl.col("trunk").is_not_null())
    trunks = branches.group_by("trunk").agg(pl.col("branch_start").max())
    trained = int(branches["samples_trained"].sum() + trunks["branch_start"].sum())
    separate = int(res["samples_seen"].sum())
    own = res.height - branches.height
    trained += int(res.filter(pl.col("trunk").is_null())["samples_seen"].sum())
    return [f"wsd: {branches.height} trial(s) branched off {trunks.height} trunk(s)"
            + (f" (and {own} ran alone)" if own else "")
            + f": {trained:,} samples trained where separate runs would train {separate:,} "
              f"({separate / max(trained, 1):.2f}x fewer)"]


def schedule_comparison(results: pl.DataFrame, metrics: tuple[str, ...] = ("val_loss", "linear_top1")) -> pl.DataFrame:
    """wsd vs cosine per budget (and k): each schedule's mean over seeds, and the difference wsd - cosine
    paired by seed with its 95% t-interval (``lo``/``hi``; null with one seed). Empty unless the study
    swept `pretrain.schedule` over both."""
    need = {"pretrain.schedule", "pretrain.samples", "seed"}
    if not need <= set(results.columns) or set(results["pretrain.schedule"].drop_nulls().unique()) != {"cosine",
                                                                                                          "wsd"}:
        return pl.DataFrame()
    keys = ["pretrain.samples"] + (["block_size"] if "block_size" in results.columns
                                   and results["block_size"].n_unique() > 1 else [])
    rows = []
    for group, part in results.group_by(keys, maintain_order=True):
        by = {s: part.filter(pl.col("pretrain.schedule") == s) for s in ("cosine", "wsd")}
        row: dict = dict(zip(keys, group))
        for metric in metrics:
            paired = by["wsd"].select("seed", pl.col(metric).alias("w")).join(
                by["cosine"].select("seed", pl.col(metric).alias("c")), on="seed").drop_nulls()
            diffs = (paired["w"] - paired["c"]).to_list()
            mean, half, n = mean_ci(diffs)
            row.update({f"{metric} wsd": by["wsd"][metric].mean(), f"{metric} cosine": by["cosine"][metric].mean(),
                        f"{metric} delta": mean if n else None,
                        f"{metric} lo": mean - half if n > 1 else None, f"{metric} hi": mean + half if n > 1 else None,
                        "seeds": n})
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None).sort(keys)


def schedule_table(study: Study) -> list[Table]:
    df = schedule_comparison(study.finished)
    if df.is_empty():
        return []

    def cell(v: object, digits: str = ".4f") -> str:
        return "-" if v is None else format(v, digits)

    columns = [c for c in df.columns if not c.endswith((" lo", " hi"))]
    body = []
    for r in df.iter_rows(named=True):
        out = []
        for c in columns:
            if c.endswith(" delta"):
                base = c[: -len(" delta")]
                ci = (f" [{cell(r[base + ' lo'])}, {cell(r[base + ' hi'])}]" if r[base + " lo"] is not None else "")
                out.append(cell(r[c]) + ci)
            elif isinstance(r[c], float):
                out.append(cell(r[c]))
            else:
                out.append(str(r[c]))
        body.append(out)
    return [Table(title="wsd vs cosine per budget (delta = wsd - cosine, paired by seed, 95% CI)",
                  columns=columns, rows=body, id="table-schedule",
                  note="Each wsd trial branched off a shared trunk; each cosine trial ran alone.")]


def still_improving(study: Study) -> list[str]:
    """A sentence naming the final probes whose chosen head was still improving over its last quarter
    of epochs: their top-1 understates the encoder (the probe wants more epochs)."""
    rows = _probe_rows(study)
    if rows.is_empty() or "still_improving" not in rows.columns:
        return []
    last = rows.filter(pl.col("samples") == pl.col("samples").max().over("config_hash"))
    flagged = last.filter(pl.col("still_improving").fill_null(False)).sort("trial_id", "kind", "dataset")
    if flagged.is_empty():
        return []
    names = [f"{r['kind']} on {r['dataset']} of {r['trial_id']} ({100 * r['top1']:.1f}%)"
             for r in flagged.iter_rows(named=True)]
    return [f"Still improving at the last probe epoch, so these top-1s understate their encoders (more "
            f"probe epochs would raise them): {', '.join(names)}."]


def evaluation(study: Study) -> tuple[list[Panel], list[Table], list[str]]:
    """Panels, tables and the efficiency sentences (for the page and summary.md)."""
    panels, sentences = [], wsd_samples(study) + still_improving(study)
    for kind in ("linear", "attentive"):
        panel, said = sample_efficiency_from_checkpoints(study, kind)
        if panel.figure is not None or kind == "linear":
            panels.append(panel)
        sentences += said
    sentences += parameter_ratios(study)
    return panels, suite_tables(study) + schedule_table(study), sentences
