"""The paper's evaluation in the report: learning curves (probe top-1 at the checkpoints each trial
keeps, never used for ratios), the "X x fewer samples" ratios from completed budgets and "X x fewer
parameters" from a width sweep, with censored bootstrap CIs, and the
downstream suite's per-dataset table with its average. Numbers come from ``reports.efficiency``;
this module only turns a collected study into panels, tables and sentences."""

from __future__ import annotations

import plotly.graph_objects as go
import polars as pl

from . import efficiency as eff
from .collect import StudyResults
from .panel import PALETTE, Panel, block_key, layout, param_axis
from .tables import SAMPLE_KEYS, SIZE_KEYS, Table, at_defaults, mean_ci


def _probe_rows(study: StudyResults) -> pl.DataFrame:
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


def learning_curves(study: StudyResults, kind: str = "linear") -> Panel:
    """Top-1 at the checkpoints probed along each run, one line per k (mean over seeds, 95% band). A
    mid-schedule checkpoint is not a model trained to that budget (its lr never decayed), so these are
    learning curves: drawn, labelled so, and never used for a ratio."""
    pid, title = f"probe-curves-{kind}", f"Learning curves: {kind} top-1 at mid-schedule checkpoints"
    rows = _probe_rows(study)
    if rows.is_empty():
        return Panel(pid, title, note="Skipped: no probe results along pretraining (set probe.points or "
                                      "probe.at_samples).")
    rows = rows.filter(pl.col("kind") == kind)
    if rows.is_empty():  # e.g. probe.kinds = ["linear"]: no attentive rows
        return Panel(pid, title, note=f"Skipped: no {kind} probe results along pretraining.")
    datasets = sorted(rows["dataset"].unique().to_list())
    dataset = study.base.get("data.name") if study.base.get("data.name") in datasets else datasets[0]
    rows = rows.filter(pl.col("dataset") == dataset)
    if rows.is_empty() or rows.group_by("config_hash").agg(pl.col("samples").n_unique()).get_column(
            "samples").max() < 2:
        return Panel(pid, title, note="Skipped: each trial was probed at its end only (set probe.points or "
                                      "probe.at_samples to probe along pretraining).")
    fig = go.Figure()
    for i, (k,) in enumerate(rows.select("block_size").unique().sort("block_size").iter_rows()):
        color = PALETTE[i % len(PALETTE)]
        for j, (h,) in enumerate(rows.filter(pl.col("block_size") == k).select("config_hash").unique()
                                 .sort("config_hash").iter_rows()):
            c = rows.filter(pl.col("config_hash") == h).sort("samples")  # one line per trial: never averaged
            fig.add_trace(go.Scatter(x=c["samples"].to_list(), y=[100 * v for v in c["top1"].to_list()],
                                     mode="lines+markers", name=f"k={k}", legendgroup=f"k={k}", showlegend=j == 0,
                                     line=dict(color=color, width=1.2), opacity=0.8))
    layout(fig, title, "samples seen (checkpoints within a run)", f"{kind} top-1 (%) on {dataset}", logx=True)
    note = ("One line per trial: probes of its checkpoints during pretraining. A checkpoint before the end of "
            "its schedule is not a model trained to that budget (its lr never decayed), so no sample-efficiency "
            "ratio is read from these curves; ratios come from completed budgets only.")
    return Panel(pid, title, fig, note=note)


def budget_rows(study: StudyResults, kind: str = "linear") -> tuple[pl.DataFrame, str]:
    """One row per finished trial at its completed budget (a separate run, or a wsd branch after its
    cooldown): config_hash, block_size, seed, samples (= samples seen), top1. Swept keys other than k,
    the budget and the seed are held at their defaults; a (k, seed, budget) with several trials left
    is refused with the reason, never averaged."""
    col = f"{kind}_top1"
    res = study.finished
    need = ("block_size", "samples_seen", "seed", col)
    if res.is_empty() or any(c not in res.columns for c in need):
        return pl.DataFrame(), "no finished trial with a top-1 and a budget"
    res, free = at_defaults(study, res, SAMPLE_KEYS[0], exclude=("block_size", block_key(study)))
    rows = res.filter(pl.col(col).is_not_null()).select(
        "config_hash", pl.col("block_size").cast(pl.Int64), "seed", pl.col("samples_seen").alias("samples"),
        pl.col(col).alias("top1"))
    dup = rows.group_by("block_size", "seed", "samples").len().filter(pl.col("len") > 1)
    if dup.height:
        return pl.DataFrame(), (f"several trials per (k, seed, budget) ({', '.join(free) or 'another key'} "
                                "varies without a default run): a curve point must be one model")
    return rows, ""


def sample_ratios(study: StudyResults, kind: str = "linear") -> list[str]:
    """'k reaches k=1's top-1 with X x fewer samples' from completed budgets (several budgets per k,
    k=1 among them), with censored bootstrap intervals over seeds."""
    rows, _ = budget_rows(study, kind)
    if rows.is_empty():
        return []
    ks = rows["block_size"].unique().to_list()
    per_k = rows.group_by("block_size").agg(pl.col("samples").n_unique().alias("n"))
    if 1 not in ks or len(ks) < 2 or per_k["n"].min() < 2:
        return []
    ratios = eff.sample_efficiency(rows, kind=kind, baseline=1, n_boot=1000)
    return [f"{s} (completed budgets)" for s in eff.ratio_sentences(ratios, what="samples", kind=kind)]


def parameter_ratios(study: StudyResults, kind: str = "linear") -> list[str]:
    """'X x fewer parameters' from a width sweep (several sizes per k, k=1 among them), in the one
    parameter count the report uses (``param_axis``), at completed budgets: keys other than k and the
    size held at their defaults; several trials left at one (k, seed, size) give no sentence."""
    res = study.finished
    col = f"{kind}_top1"
    ncol, nname = param_axis(study)
    if col not in res.columns or "block_size" not in res.columns or ncol not in res.columns or res.is_empty():
        return []
    sizes = [k for k in study.swept if k in SIZE_KEYS]
    res, _ = at_defaults(study, res, sizes[0] if sizes else ncol, exclude=(*sizes, "block_size", block_key(study)))
    res = res.with_columns(pl.col("block_size").cast(pl.Int64)).filter(pl.col(col).is_not_null())
    per_k = res.group_by("block_size").agg(pl.col(ncol).n_unique().alias("sizes"))
    if 1 not in per_k["block_size"].to_list() or per_k["sizes"].min() < 2 or per_k.height < 2:
        return []
    if res.group_by("block_size", "seed", ncol).len()["len"].max() > 1:
        return []
    ratios = eff.parameter_efficiency(res, kind=kind, params=ncol, baseline=1, n_boot=1000)
    return eff.ratio_sentences(ratios, what=nname.split(" (")[0], kind=kind)


def suite_tables(study: StudyResults) -> list[Table]:
    """With several probe datasets: one table per kind, a row per trial, a column per dataset + average."""
    rows = _probe_rows(study)
    if rows.is_empty() or rows["dataset"].n_unique() < 2:
        return []
    out = []
    for kind in sorted(rows["kind"].unique().to_list()):
        table = eff.suite_table(rows, label="trial_id", kind=kind)
        columns = table.columns
        body = [[eff.table_cell(r[c], c != "trial_id") for c in columns] for r in table.iter_rows(named=True)]
        out.append(Table(title=f"Downstream suite: {kind} top-1 (%) per dataset and average", columns=columns,
                         rows=body, id=f"table-suite-{kind}",
                         note="At each trial's last checkpoint; the average is over every dataset of the suite "
                              "(empty when a dataset is missing, never a mean over fewer sets)."))
    return out


def wsd_samples(study: StudyResults) -> list[str]:
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


def schedule_table(study: StudyResults) -> list[Table]:
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


def still_improving_notes(study: StudyResults) -> list[str]:
    """A sentence naming the final probes flagged `still_improving` (`xtra.probe.still_improving`: the
    chosen head's schedule doubled, or halved, moved its val top-1 significantly): their top-1
    understates the encoder (the probe wants more epochs)."""
    rows = _probe_rows(study)
    if rows.is_empty() or "still_improving" not in rows.columns:
        return []
    last = rows.filter(pl.col("samples") == pl.col("samples").max().over("config_hash"))
    flagged = last.filter(pl.col("still_improving").fill_null(False)).sort("trial_id", "kind", "dataset")
    if flagged.is_empty():
        return []
    names = [f"{r['kind']} on {r['dataset']} of {r['trial_id']} ({100 * r['top1']:.1f}%)"
             for r in flagged.iter_rows(named=True)]
    return [f"Still improving: a longer probe schedule scored significantly higher on val, so these top-1s "
            f"understate their encoders (more probe epochs would raise them): {', '.join(names)}."]


def evaluation(study: StudyResults) -> tuple[list[Panel], list[Table], list[str]]:
    """Panels, tables and the efficiency sentences (for the page and summary.md)."""
    panels, sentences = [], wsd_samples(study) + still_improving_notes(study)
    for kind in ("linear", "attentive"):
        panel = learning_curves(study, kind)
        if panel.figure is not None or kind == "linear":
            panels.append(panel)
        sentences += sample_ratios(study, kind)
    sentences += parameter_ratios(study)
    return panels, suite_tables(study) + schedule_table(study), sentences
