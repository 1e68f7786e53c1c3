"""Plotly figures for a study: only what its data supports.

Each builder returns a ``Panel`` (``reports.panel``): a stable id (the HTML div is ``fig-<id>``), a figure or ``None``
with a note saying why it was skipped, and any tables that go with it (scaling-law parameters).

Lines group trials by their swept keys (seed never: seeds are averaged, with 95% t-interval error
bars). Keys that set the model's size (``SIZE_KEYS``) or the sample budget (``SAMPLE_KEYS``) are the
x axis of the efficiency and scaling figures, so they are left out of those figures' line groups.
The scaling fits use the final validation loss when every finished trial has one, else the final
train loss. Every fit goes through ``reports.scaling``'s model comparison, diagnostics and held-out
check; a curve, band, frontier or iso-FLOP curve is drawn only from a law (an identifiable chosen
form), and each panel's ``laws`` say, per group, which law was found or why there is none.
"""


from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import polars as pl

from .collect import StudyResults
from .compute_panels import chinchilla_fits, compute_figure, frontier_figure, isoflop_figure
from .law_panels import learning_curve_laws, loss_scaling
from .panel import (
    PALETTE,
    PROBE_STYLE,
    Panel,
    block_key,
    colors,
    error_bars_note,
    group_keys,
    groups,
    layout,
    loss_column,
    mean_by_x,
    param_axis,
    positive,
    probe_columns,
    varies_within,
)
from .prediction_panel import predictions_panel
from .tables import SAMPLE_KEYS, SIZE_KEYS, at_defaults, top1_scale

__all__ = ["PALETTE", "Panel", "loss_column", "panels"]


# ---------------------------------------------------------------------------------------------
# Training curves


def loss_curves(study: StudyResults, per_trial_limit: int = 40) -> Panel:
    pid, title = "loss-curves", "Pretraining loss vs samples seen"
    cur = positive(study.curves, "samples_seen", "loss")
    if cur.height == 0:
        return Panel(pid, title, note="No training-curve rows with samples_seen > 0 and a finite loss.")
    keys = group_keys(study, SAMPLE_KEYS)  # a longer budget is a longer line, not a new colour
    info = study.results.select("config_hash", "seed", "status", *keys).unique("config_hash", keep="first")
    cur = cur.join(info, on="config_hash", how="left")
    n_trials = cur.get_column("config_hash").n_unique()
    max_pts = 200 if n_trials <= per_trial_limit else 64
    log_s = pl.col("samples_seen").log()
    lo, hi = log_s.min().over("config_hash"), log_s.max().over("config_hash")
    cur = (cur.sort("config_hash", "samples_seen")
           .with_columns(((log_s - lo) / (hi - lo + 1e-12) * (max_pts - 1)).floor().alias("_bin"))
           .unique(["config_hash", "_bin"], keep="last", maintain_order=True))
    parts = groups(cur, keys)
    cmap = colors([lab for lab, _ in parts])
    fig = go.Figure()
    for lab, part in parts:
        if n_trials <= per_trial_limit:
            for trial in part.partition_by("config_hash", maintain_order=True):
                row = trial.row(0, named=True)
                failed = row["status"] not in (None, "finished")
                seed = "" if row["seed"] is None else f", seed={row['seed']:.0f}"
                fig.add_trace(go.Scatter(
                    x=trial["samples_seen"].to_list(), y=trial["loss"].to_list(), mode="lines",
                    name=f"{lab}{seed}" + (" (not finished)" if failed else ""), legendgroup=lab,
                    line=dict(color=cmap[lab], width=1.5, dash="dot" if failed else "solid"),
                    hovertemplate=f"{lab}{seed}<br>trial {row['config_hash']}<br>samples %{{x:.3s}}<br>"
                                  f"loss %{{y:.4g}}<extra></extra>"))
        else:  # one trace per group, trials separated by gaps: the page stays light at 1000 trials
            xs: list[float | None] = []
            ys: list[float | None] = []
            for trial in part.partition_by("config_hash", maintain_order=True):
                xs += trial["samples_seen"].to_list() + [None]
                ys += trial["loss"].to_list() + [None]
            n = part.get_column("config_hash").n_unique()
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"{lab} ({n} trials)", connectgaps=False,
                                     line=dict(color=cmap[lab], width=1), opacity=0.6))
    note = "" if n_trials <= per_trial_limit else f"{n_trials} trials: one line colour per group, curves thinned."
    return Panel(pid, title, layout(fig, title, "samples seen", "pretraining loss", logx=True), note=note)




# ---------------------------------------------------------------------------------------------
# Probe accuracy



def probe_vs_block_size(study: StudyResults) -> Panel:
    pid, title = "probe-vs-k", "Probe top-1 vs block size k"
    fin = study.finished
    if fin.get_column("block_size").drop_nulls().n_unique() < 2:
        return Panel(pid, title, note="Skipped: the block size does not vary among finished trials.")
    probes = probe_columns(fin)
    if not probes:
        return Panel(pid, title, note="Skipped: no finished trial has a finite probe top-1.")
    with_probe = fin.filter(pl.any_horizontal([pl.col(p).is_not_null() for p in probes]))
    if with_probe.get_column("block_size").drop_nulls().n_unique() < 2:
        return Panel(pid, title, note="Skipped: probe results exist for only one block size.")
    bkey = block_key(study)
    df, free = at_defaults(study, fin, bkey, exclude=("block_size",))
    scale = top1_scale(fin)
    parts = groups(df, free)
    cmap = colors([lab for lab, _ in parts])
    fig = go.Figure()
    ks: set[float] = set()
    for lab, part in parts:
        for probe in probes:
            xs, ms, hs = mean_by_x(part.filter(pl.col(probe).is_not_null()), "block_size", probe)
            ks.update(xs)
            name, dash = PROBE_STYLE[probe]
            fig.add_trace(go.Scatter(
                x=xs, y=[m * scale for m in ms], error_y=dict(type="data", array=[h * scale for h in hs]),
                mode="lines+markers", name=name if lab == "all" else f"{lab}, {name}", legendgroup=lab,
                line=dict(dash=dash, color=cmap[lab])))
    layout(fig, title, "block size k", "top-1 (%)" if scale == 100 else "top-1", logx=True)
    tick = sorted(ks)
    fig.update_xaxes(tickvals=tick, ticktext=[f"{k:g}" for k in tick])
    held = [k for k in study.swept if k not in free and k != bkey]
    note = ("Other swept keys held at their defaults. " if held else "") + error_bars_note(fin)
    return Panel(pid, title, fig, note=note)


def _efficiency(study: StudyResults, pid: str, title: str, x: str, xtitle: str, exclude: Sequence[str],
                skip: str) -> Panel:
    fin = positive(study.finished, x)
    probes = probe_columns(fin)
    keys = group_keys(study, exclude)
    parts = groups(fin, keys)
    if not varies_within(parts, x):
        return Panel(pid, title, note=skip)
    if not probes:
        return Panel(pid, title, note="Skipped: no finished trial has a finite probe top-1.")
    scale = top1_scale(fin)
    cmap = colors([lab for lab, _ in parts])
    fig = go.Figure()
    for lab, part in parts:
        for probe in probes:
            xs, ms, hs = mean_by_x(part.filter(pl.col(probe).is_not_null()), x, probe)
            name, dash = PROBE_STYLE[probe]
            fig.add_trace(go.Scatter(
                x=xs, y=[m * scale for m in ms], error_y=dict(type="data", array=[h * scale for h in hs]),
                mode="lines+markers", name=name if lab == "all" else f"{lab}, {name}", legendgroup=lab,
                line=dict(dash=dash, color=cmap[lab])))
    layout(fig, title, xtitle, "top-1 (%)" if scale == 100 else "top-1", logx=True)
    return Panel(pid, title, fig, note="Solid: linear probe; dashed: attentive probe. " + error_bars_note(fin))




def sample_efficiency_panel(study: StudyResults) -> Panel:
    return _efficiency(study, "sample-efficiency", "Sample efficiency: probe top-1 vs samples seen", "samples_seen",
                       "samples seen", SAMPLE_KEYS, "Skipped: samples seen do not vary within any configuration.")


def parameter_efficiency_panel(study: StudyResults) -> Panel:
    ncol, nname = param_axis(study)
    return _efficiency(study, "param-efficiency", f"Parameter efficiency: probe top-1 vs {nname.split(' (')[0]}",
                       ncol, nname, SIZE_KEYS, "Skipped: the parameter count does not vary within any "
                                                "configuration (sweep a size key such as model.width).")



def panels(study: StudyResults, n_boot: int = 200, pictures: Any = None) -> list[Panel]:
    """Every panel of a study's report, skipped ones included (figure None, with the reason)."""
    chinchilla, why = chinchilla_fits(study, n_boot)
    return [
        loss_curves(study),
        probe_vs_block_size(study),
        sample_efficiency_panel(study),
        parameter_efficiency_panel(study),
        compute_figure(study, chinchilla, n_boot),
        loss_scaling(study, "samples_seen", "samples seen", SAMPLE_KEYS, n_boot),
        loss_scaling(study, *param_axis(study), SIZE_KEYS, n_boot),
        learning_curve_laws(study, n_boot),
        isoflop_figure(study, chinchilla, why),
        frontier_figure(study, chinchilla),
        predictions_panel(study, pictures),
    ]
