"""Plotly figures for a study: only what its data supports.

Each builder returns a ``Panel``: a stable id (the HTML div is ``fig-<id>``), a figure or ``None``
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

import base64
import math
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from .collect import REPLICATE_KEYS, Study
from .scaling import ChinchillaFit, FormFit, HeldOut, LawAnalysis, analyze_chinchilla, analyze_power_law
from .tables import SAMPLE_KEYS, SIZE_KEYS, Table, at_defaults, human, label, mean_ci, top1_scale

PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Dark24
PROBE_STYLE = {"linear_top1": ("linear", "solid"), "attentive_top1": ("attentive", "dash")}
MIN_FIT_X = 4  # distinct x values before a power law (3 parameters) is fitted
MIN_CHINCHILLA_PAIRS = 6  # distinct (N, D) pairs before the 5-parameter surface is fitted


@dataclass
class Panel:
    id: str
    title: str
    figure: go.Figure | None = None
    note: str = ""
    tables: list[Table] = field(default_factory=list)
    laws: list[tuple[str, str]] = field(default_factory=list)  # (verdict, sentence) per fitted group


def _layout(fig: go.Figure, title: str, x: str, y: str, logx: bool = False, logy: bool = False,
            height: int = 460) -> go.Figure:
    fig.update_layout(template="plotly_white", title=dict(text=title, x=0.01), height=height,
                      margin=dict(l=70, r=20, t=60, b=60), hovermode="closest",
                      legend=dict(font=dict(size=11), itemsizing="constant"))
    fig.update_xaxes(title_text=x, type="log" if logx else "linear")
    fig.update_yaxes(title_text=y, type="log" if logy else "linear")
    return fig


def colors(labels: Sequence[str]) -> dict[str, str]:
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(dict.fromkeys(labels))}


def group_keys(study: Study, exclude: Sequence[str] = ()) -> list[str]:
    return [k for k in study.swept if k not in exclude and k not in REPLICATE_KEYS]


def groups(df: pl.DataFrame, keys: Sequence[str]) -> list[tuple[str, pl.DataFrame]]:
    """(label, rows) per combination of ``keys``, in sorted order; one ("all", df) group without keys."""
    if not keys or df.height == 0:
        return [("all", df)] if df.height else []
    parts = df.sort(list(keys), nulls_last=True).partition_by(list(keys), maintain_order=True, as_dict=True)
    return [(label(keys, vals), part) for vals, part in parts.items()]


def loss_column(study: Study) -> tuple[str, str]:
    fin = study.finished
    if fin.height and fin.get_column("val_loss").is_not_null().all():
        return "val_loss", "final val loss"
    return "train_loss", "final train loss"


def _probes(df: pl.DataFrame) -> list[str]:
    return [c for c in PROBE_STYLE if df.get_column(c).drop_nulls().len() > 0]


def _agg(df: pl.DataFrame, x: str, y: str) -> tuple[list[float], list[float], list[float]]:
    """Mean and t-interval of y over the rows sharing each x (seeds), x ascending."""
    xs, ms, hs = [], [], []
    df = df.filter(pl.col(x).is_not_null())
    for (xv,), part in sorted(df.partition_by(x, as_dict=True).items(), key=lambda kv: kv[0][0]):
        m, h, n = mean_ci(part.get_column(y).to_list())
        if n:
            xs.append(xv)
            ms.append(m)
            hs.append(h if math.isfinite(h) else 0.0)
    return xs, ms, hs


def _positive(df: pl.DataFrame, *cols: str) -> pl.DataFrame:
    return df.filter(pl.all_horizontal([pl.col(c).is_not_null() & pl.col(c).is_finite() & (pl.col(c) > 0)
                                        for c in cols]))


def _varies_within(parts: list[tuple[str, pl.DataFrame]], col: str, at_least: int = 2) -> bool:
    return any(p.get_column(col).n_unique() >= at_least for _, p in parts)


# ---------------------------------------------------------------------------------------------
# Training curves


def loss_curves(study: Study, per_trial_limit: int = 40) -> Panel:
    pid, title = "loss-curves", "Pretraining loss vs samples seen"
    cur = _positive(study.curves, "samples_seen", "loss")
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
    return Panel(pid, title, _layout(fig, title, "samples seen", "pretraining loss", logx=True), note=note)


# ---------------------------------------------------------------------------------------------
# Probe accuracy


def _block_key(study: Study) -> str:
    return next((k for k in study.swept if k.split(".")[-1] == "block_size"), "block_size")


def probe_vs_block_size(study: Study) -> Panel:
    pid, title = "probe-vs-k", "Probe top-1 vs block size k"
    fin = study.finished
    if fin.get_column("block_size").drop_nulls().n_unique() < 2:
        return Panel(pid, title, note="Skipped: the block size does not vary among finished trials.")
    probes = _probes(fin)
    if not probes:
        return Panel(pid, title, note="Skipped: no finished trial has a finite probe top-1.")
    with_probe = fin.filter(pl.any_horizontal([pl.col(p).is_not_null() for p in probes]))
    if with_probe.get_column("block_size").drop_nulls().n_unique() < 2:
        return Panel(pid, title, note="Skipped: probe results exist for only one block size.")
    bkey = _block_key(study)
    df, free = at_defaults(study, fin, bkey, exclude=("block_size",))
    scale = top1_scale(fin)
    parts = groups(df, free)
    cmap = colors([lab for lab, _ in parts])
    fig = go.Figure()
    ks: set[float] = set()
    for lab, part in parts:
        for probe in probes:
            xs, ms, hs = _agg(part.filter(pl.col(probe).is_not_null()), "block_size", probe)
            ks.update(xs)
            name, dash = PROBE_STYLE[probe]
            fig.add_trace(go.Scatter(
                x=xs, y=[m * scale for m in ms], error_y=dict(type="data", array=[h * scale for h in hs]),
                mode="lines+markers", name=name if lab == "all" else f"{lab}, {name}", legendgroup=lab,
                line=dict(dash=dash, color=cmap[lab])))
    _layout(fig, title, "block size k", "top-1 (%)" if scale == 100 else "top-1", logx=True)
    tick = sorted(ks)
    fig.update_xaxes(tickvals=tick, ticktext=[f"{k:g}" for k in tick])
    held = [k for k in study.swept if k not in free and k != bkey]
    note = ("Other swept keys held at their defaults. " if held else "") + _error_bars(fin)
    return Panel(pid, title, fig, note=note)


def _efficiency(study: Study, pid: str, title: str, x: str, xtitle: str, exclude: Sequence[str],
                skip: str) -> Panel:
    fin = _positive(study.finished, x)
    probes = _probes(fin)
    keys = group_keys(study, exclude)
    parts = groups(fin, keys)
    if not _varies_within(parts, x):
        return Panel(pid, title, note=skip)
    if not probes:
        return Panel(pid, title, note="Skipped: no finished trial has a finite probe top-1.")
    scale = top1_scale(fin)
    cmap = colors([lab for lab, _ in parts])
    fig = go.Figure()
    for lab, part in parts:
        for probe in probes:
            xs, ms, hs = _agg(part.filter(pl.col(probe).is_not_null()), x, probe)
            name, dash = PROBE_STYLE[probe]
            fig.add_trace(go.Scatter(
                x=xs, y=[m * scale for m in ms], error_y=dict(type="data", array=[h * scale for h in hs]),
                mode="lines+markers", name=name if lab == "all" else f"{lab}, {name}", legendgroup=lab,
                line=dict(dash=dash, color=cmap[lab])))
    _layout(fig, title, xtitle, "top-1 (%)" if scale == 100 else "top-1", logx=True)
    return Panel(pid, title, fig, note="Solid: linear probe; dashed: attentive probe. " + _error_bars(fin))


def several_seeds(rows: pl.DataFrame) -> bool:
    """Whether `rows` hold more than one seed: only then is there a spread over seeds to show."""
    return "seed" in rows.columns and rows.get_column("seed").n_unique() > 1


def _error_bars(rows: pl.DataFrame) -> str:
    return "Error bars: 95% t-interval over seeds." if several_seeds(rows) else "One seed: no error bars."


def sample_efficiency(study: Study) -> Panel:
    return _efficiency(study, "sample-efficiency", "Sample efficiency: probe top-1 vs samples seen", "samples_seen",
                       "samples seen", SAMPLE_KEYS, "Skipped: samples seen do not vary within any configuration.")


def parameter_efficiency(study: Study) -> Panel:
    return _efficiency(study, "param-efficiency", "Parameter efficiency: probe top-1 vs parameters", "n_params",
                       "parameters", SIZE_KEYS, "Skipped: the parameter count does not vary within any "
                                                "configuration (sweep a size key such as model.width).")


# ---------------------------------------------------------------------------------------------
# Scaling laws. Every fit goes through reports.scaling's model comparison and diagnostics: a curve
# is drawn, and a law stated, only when the chosen form is identifiable; otherwise the points are
# shown and the panel says why there is no law. Curves stay within the data's range (extrapolation
# dashed), and the y axis is set by the data, never by a band.

HELD_MARKER = dict(symbol="diamond-open", size=12, line=dict(width=2))
PRED_MARKER = dict(symbol="x-thin-open", size=11, line=dict(width=2))


def _fmt_ci(value: float, ci: tuple[float, float]) -> str:
    if not math.isfinite(value):
        return "–"
    if not all(math.isfinite(v) for v in ci):
        return f"{value:.4g}"
    return f"{value:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]"


def _param(fit: FormFit | None, name: str) -> str:
    if fit is None or name not in fit.params:
        return "–"
    return _fmt_ci(fit.params[name], fit.ci[name])


def _held_cells(a: LawAnalysis) -> list[str]:
    h = a.held
    if h is None:
        return ["–", a.held_note or "–"]
    inside = f"{int(h.inside.sum())}/{len(h.actual)}" if h.has_interval else "no interval"
    return [f"{h.mean_abs_rel_error:.2%}", inside]


def _verdict(a: LawAnalysis, descriptive: bool = False) -> str:
    if a.law is None:
        return "no law"
    return "descriptive fit" if descriptive else "law"


def _why(a: LawAnalysis) -> str:
    chosen = a.chosen
    why = a.comparison.reason
    if chosen is not None and a.law is None and chosen.diagnostics.problems and not why.startswith("no law"):
        why = "no law: " + chosen.diagnostics.summary()
    return why


def law_table(title: str, analyses: Mapping[str, LawAnalysis], xname: str, tid: str,
              descriptive: Mapping[str, bool] | None = None) -> Table:
    """One row per fitted group: verdict, chosen form, parameters [95% CI], diagnostics, held-out check."""
    descriptive = descriptive or {}
    rows = []
    for lab, a in analyses.items():
        f = a.law or a.chosen
        d = f.diagnostics if f is not None else None
        rows.append([lab, _verdict(a, descriptive.get(lab, False)), f.form.name if f is not None else "–",
                     str(f.n_points) if f is not None else "–", _param(a.law, "E"),
                     _param(a.law, "A") if a.law is None or "A" in a.law.params else _param(a.law, "C"),
                     _param(a.law, "alpha"), f"{d.rmse_log:.3g}" if d else "–",
                     f"{d.points_per_param:.1f}" if d else "–", *_held_cells(a), _why(a)])
    return Table(title=title, columns=["group", "verdict", "form", "points", "E", "A (or C)", "alpha",
                                       "RMSE log L", "points/param", "held-out error", "held-out in 95% PI", "why"],
                 rows=rows, id=tid,
                 note=f"Forms: L = E + A·{xname}^-alpha (full), A·{xname}^-alpha (E = 0, log-linear), a constant "
                      "(no scaling); fitted on log L (Huber, delta 1e-3, L-BFGS-B), [95% bootstrap percentile "
                      "interval]. The form is the simplest within one standard error of the best cross-validated "
                      "error; it is a law only if identifiable (no parameter at a bound, E and alpha intervals "
                      f"narrower than their value, >= 2 points per parameter). Held out: {{what}}, refitted "
                      "without it; PI = 95% prediction interval.")


def comparison_table(title: str, analyses: Mapping[str, LawAnalysis], tid: str) -> Table:
    rows = []
    for lab, a in analyses.items():
        chosen = a.chosen.form.name if a.chosen is not None else None
        for s in a.comparison.scores:
            rows.append([lab, s.form.name, str(s.form.n_params),
                         f"{s.cv_rmse:.4g}" if math.isfinite(s.cv_rmse) else "–",
                         f"{s.cv_se / (2 * s.cv_rmse):.2g}" if math.isfinite(s.cv_se) and s.cv_rmse > 0 else "–",
                         "chosen" if s.form.name == chosen else "", s.note])
    method = next(iter(analyses.values())).comparison.method if analyses else "leave-one-out"
    return Table(title=title, columns=["group", "form", "parameters", "CV RMSE (log L)", "± SE", "", "note"],
                 rows=rows, id=tid,
                 note=f"Cross-validated ({method}; 5-fold above 20 points) error of log L per form. Chosen: the "
                      "simplest form within one standard error of the best (the one-standard-error rule), if "
                      "identifiable; a constant chosen means no law.")


def held_out_table(title: str, analyses: Mapping[str, LawAnalysis], columns: Sequence[str], tid: str) -> Table:
    rows = []
    for lab, a in analyses.items():
        h = a.held
        if h is None:
            continue
        for i in range(len(h.actual)):
            xs = [human(v) for v in h.X[i]]
            pi = f"[{h.lo[i]:.4g}, {h.hi[i]:.4g}]" if h.has_interval else "–"
            inside = ("yes" if h.inside[i] else "no") if h.has_interval else "–"
            rows.append([lab, *xs, f"{h.actual[i]:.4g}", f"{h.predicted[i]:.4g}", pi, f"{h.rel_error[i]:+.2%}", inside])
    what = next((a.held.what for a in analyses.values() if a.held is not None), "")
    return Table(title=title, columns=["group", *columns, "actual", "predicted", "95% PI", "error", "inside PI"],
                 rows=rows, id=tid, note=f"Held out: {what}; the chosen form refitted on the other runs predicts "
                                         "them. PI: bootstrap fits plus resampled residuals.")


def _band(fig: go.Figure, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, color: str, group: str, **kw: Any) -> None:
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        return
    fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]), fill="toself",
                             fillcolor=color, opacity=0.18, line=dict(width=0), hoverinfo="skip", showlegend=False,
                             legendgroup=group, **kw))


def data_range(values: Sequence[float] | np.ndarray, log: bool = True, pad: float = 0.12) -> list[float]:
    """An axis range around the data (log10 units for a log axis), padded by ``pad`` of the span."""
    v = np.asarray([x for x in np.ravel(values) if x is not None and np.isfinite(x) and (x > 0 or not log)])
    if v.size == 0:
        return [0.0, 1.0]
    v = np.log10(v) if log else v
    lo, hi = float(v.min()), float(v.max())
    span = max(hi - lo, 0.05 if log else abs(hi) * 0.1 or 1.0)
    return [lo - pad * span, hi + pad * span]


def _analyze_power(xs: np.ndarray, ys: np.ndarray, n_boot: int, hold_out: str | None = "largest"
                   ) -> tuple[LawAnalysis | None, str]:
    if len(np.unique(xs)) < MIN_FIT_X:
        return None, f"{len(np.unique(xs))} distinct x values (a fit needs {MIN_FIT_X})"
    try:
        return analyze_power_law(xs, ys, n_boot=n_boot, seed=0, hold_out=hold_out,
                                 no_hold_out_reason="cosine schedule: descriptive, not extrapolated"), ""
    except ValueError as exc:
        return None, str(exc)


def _draw_law(fig: go.Figure, a: LawAnalysis, grid_x: np.ndarray, predict: Callable[[FormFit, np.ndarray], np.ndarray],
              band: Callable[[FormFit, np.ndarray], tuple[np.ndarray, np.ndarray]], lab: str, color: str,
              name: str) -> None:
    """The law's curve and band over the data's range (solid)."""
    law = a.law
    if law is None:
        return
    _band(fig, grid_x, *band(law, grid_x), color=color, group=lab)
    fig.add_trace(go.Scatter(x=grid_x, y=predict(law, grid_x), mode="lines", name=name, legendgroup=lab,
                             line=dict(color=color)))


def _draw_held(fig: go.Figure, h: HeldOut, x_held: np.ndarray, lab: str, color: str) -> None:
    """Held-out runs (open diamonds) and their predictions with 95% prediction intervals (crosses)."""
    fig.add_trace(go.Scatter(x=x_held, y=h.actual, mode="markers", name=f"{lab}: held out", legendgroup=lab,
                             marker=dict(color=color, **HELD_MARKER),
                             hovertemplate="held out<br>x %{x:.3s}<br>loss %{y:.4g}<extra></extra>"))
    err = dict(type="data", symmetric=False, array=(h.hi - h.predicted).tolist(),
               arrayminus=(h.predicted - h.lo).tolist(), color=color, thickness=1.5) if h.has_interval else None
    fig.add_trace(go.Scatter(x=x_held, y=h.predicted, mode="markers", name=f"{lab}: predicted (fit without it)",
                             legendgroup=lab, marker=dict(color=color, **PRED_MARKER), error_y=err,
                             hovertemplate="predicted %{y:.4g}<extra></extra>"))


def _points_and_law(fig: go.Figure, xs: np.ndarray, ys: np.ndarray, lab: str, color: str, n_boot: int,
                    analyses: dict[str, LawAnalysis], skipped: list[str], marker: dict, fit_name: str,
                    hold_out: str | None = "largest") -> None:
    """A group's points, then (when it is a law) its curve and band, and the held-out check."""
    a, why = _analyze_power(xs, ys, n_boot, hold_out)
    held = a.held if a is not None else None
    is_held = np.isin(xs, held.X[:, 0]) if held is not None else np.zeros(len(xs), dtype=bool)
    fig.add_trace(go.Scatter(x=xs[~is_held], y=ys[~is_held], mode="markers", name=lab, legendgroup=lab,
                             marker=dict(color=color, **marker)))
    if a is None:
        skipped.append(f"{lab}: {why}")
        return
    analyses[lab] = a
    if a.law is None:
        skipped.append(f"{lab}: {_why(a)}")
        return
    grid = np.logspace(np.log10(xs.min()), np.log10(xs.max()), 100)
    _draw_law(fig, a, grid, lambda f, g: f.predict(g), lambda f, g: f.predict_interval(g), lab, color,
              fit_name.format(lab=lab, fit=a.law.describe()))
    if held is not None:
        x_train_max = held.fit.x_range[0][1]
        ext = np.logspace(np.log10(x_train_max), np.log10(xs.max()), 30)
        fig.add_trace(go.Scatter(x=ext, y=held.fit._predict_matrix(ext[:, None]), mode="lines", showlegend=False,
                                 legendgroup=lab, line=dict(color=color, dash="dash", width=1.5),
                                 hoverinfo="skip"))  # the held-out fit, extrapolated
        _draw_held(fig, held, held.X[:, 0], lab, color)


def _law_note(analyses: Mapping[str, LawAnalysis], skipped: Sequence[str],
              descriptive: Mapping[str, bool] | None = None) -> str:
    """`descriptive`: groups whose fit describes the data but is no law (e.g. a cosine tail)."""
    fitted = [lab for lab, a in analyses.items() if a.law is not None]
    n_descriptive = sum(bool((descriptive or {}).get(lab)) for lab in fitted)
    n_laws = len(fitted) - n_descriptive
    note = ""
    if analyses:
        note = (f"{n_laws} of {len(analyses)} fitted group(s) hold a law"
                + (f", {n_descriptive} give a descriptive fit" if n_descriptive else "") + ". ")
    if n_laws:
        note += ("Solid: the law over the data's range, band: 95% bootstrap interval; dashed: the fit without the "
                 "held-out runs, extrapolated; open diamonds: held-out runs; crosses: their predictions with 95% "
                 "prediction intervals. ")
    elif n_descriptive:
        note += "Solid: the fit over the data's range, band: 95% bootstrap interval. "
    if skipped:
        note += "No law: " + "; ".join(skipped) + "."
    return note.strip()


def loss_scaling(study: Study, x: str, xtitle: str, exclude: Sequence[str], n_boot: int = 200) -> Panel:
    """Final loss vs ``x`` per configuration; a power law per group where the data identify one."""
    pid = "loss-vs-" + ("samples" if x == "samples_seen" else "params")
    lcol, ltitle = loss_column(study)
    title = f"Scaling: {ltitle} vs {xtitle}"
    fin = _positive(study.finished, x, lcol)
    parts = groups(fin, group_keys(study, exclude))
    if not _varies_within(parts, x):
        return Panel(pid, title, note=f"Skipped: {xtitle} do not vary within any configuration.")
    cmap = colors([lab for lab, _ in parts])
    fig = go.Figure()
    analyses: dict[str, LawAnalysis] = {}
    skipped: list[str] = []
    for lab, part in parts:
        xs, ys = part.get_column(x).to_numpy(), part.get_column(lcol).to_numpy()
        _points_and_law(fig, xs, ys, lab, cmap[lab], n_boot, analyses, skipped, dict(size=7, opacity=0.8),
                        "{lab} law: {fit}")
    _layout(fig, title, xtitle, ltitle, logx=True, logy=True)
    fig.update_yaxes(range=data_range(fin.get_column(lcol).to_numpy()))
    tables = [law_table(f"Law: {ltitle} vs {xtitle}", analyses, "x", f"table-fit-{pid}")] if analyses else []
    for t in tables:
        t.note = t.note.replace("{what}", f"the largest {xtitle} per group")
    return Panel(pid, title, fig, note=_law_note(analyses, skipped), tables=tables,
                 laws=_verdicts(f"{ltitle} vs {xtitle}", analyses, skipped))


def _verdicts(what: str, analyses: Mapping[str, LawAnalysis], skipped: Sequence[str] = (),
              descriptive: Mapping[str, bool] | None = None) -> list[tuple[str, str]]:
    """(verdict, sentence) per group for the report's list of laws."""
    out = []
    for lab, a in analyses.items():
        if a.law is not None:
            kind = "descriptive fit" if (descriptive or {}).get(lab) else "law"
            held = ""
            if a.held is not None:
                held = (f"; held-out error {a.held.mean_abs_rel_error:.2%}, "
                        f"{int(a.held.inside.sum())}/{len(a.held.actual)} inside the 95% PI" if a.held.has_interval
                        else f"; held-out error {a.held.mean_abs_rel_error:.2%}")
            out.append((kind, f"{what}, {lab}: {kind} ({a.law.form.name}): {a.law.describe()}{held}"))
        else:
            out.append(("no law", f"{what}, {lab}: {_why(a)}"))
    return out


def _schedules(study: Study) -> dict[str, str]:
    """LR schedule per config_hash: the ``pretrain.schedule`` column, else the study's default, else cosine
    (the only schedule before the key existed)."""
    res = study.results
    default = study.default("pretrain.schedule") or "cosine"
    if "pretrain.schedule" in res.columns:
        return {h: (s or default) for h, s in zip(res["config_hash"].to_list(), res["pretrain.schedule"].to_list())}
    return {h: default for h in res["config_hash"].to_list()}


def learning_curve_laws(study: Study, n_boot: int = 200, max_trials: int = 12, warmup_fraction: float = 0.1) -> Panel:
    """Each finished trial's own pretraining curve, L(s) = E + A·s^-alpha, fitted past the warmup.

    Every study has these curves, even one with a single budget: they say how far each configuration's
    loss was still falling when training stopped. Under a cosine schedule the LR decay shapes the tail,
    so a fit is descriptive only (no held-out extrapolation); under a constant-LR phase (wsd) the last
    20% of the curve is held out and predicted."""
    pid, title = "learning-curve-laws", "Learning-curve laws: pretraining loss vs samples seen (fitted)"
    finished = study.finished.select("config_hash", "trial_id").unique("config_hash", keep="first")
    cur = _positive(study.curves, "samples_seen", "loss").join(finished, on="config_hash", how="inner")
    hashes = cur.get_column("config_hash").unique(maintain_order=True).to_list()[:max_trials]
    if not hashes:
        return Panel(pid, title, note="Skipped: no finished trial with a pretraining curve.")
    labels = {h: str(cur.filter(pl.col("config_hash") == h).get_column("trial_id")[0] or h) for h in hashes}
    sched = _schedules(study)
    cmap = colors(list(labels.values()))
    fig = go.Figure()
    analyses: dict[str, LawAnalysis] = {}
    skipped: list[str] = []
    descriptive: dict[str, bool] = {}
    shown: list[float] = []
    for h in hashes:
        lab = labels[h]
        cosine = sched.get(h, "cosine") == "cosine"
        descriptive[lab] = cosine
        part = cur.filter(pl.col("config_hash") == h).sort("samples_seen")
        s_max = part.get_column("samples_seen").max()
        part = part.filter(pl.col("samples_seen") >= warmup_fraction * s_max)
        xs, ys = part.get_column("samples_seen").to_numpy(), part.get_column("loss").to_numpy()
        shown += ys.tolist()
        _points_and_law(fig, xs, ys, lab, cmap[lab], n_boot, analyses, skipped, dict(size=4, opacity=0.6),
                        "{lab} fit", hold_out=None if cosine else "tail")
    _layout(fig, title, "samples seen", "pretraining loss", logx=True, logy=True)
    fig.update_yaxes(range=data_range(shown))
    n_cos = sum(descriptive.values())
    note = (f"Per trial, curve rows past the first {warmup_fraction:.0%} of the budget (the warmup). ")
    if n_cos:
        note += (f"{n_cos} trial(s) ran a cosine schedule: its decay shapes the tail, so their fits are descriptive "
                 "learning curves, not laws to extrapolate (no held-out check). ")
    note += _law_note(analyses, skipped, descriptive)
    if not analyses:
        return Panel(pid, title, note="No learning-curve fit: " + "; ".join(skipped))
    table = law_table("Fit: pretraining loss vs samples seen, per trial", analyses, "s", f"table-fit-{pid}",
                      descriptive=descriptive)
    table.note = table.note.replace("{what}", "the last 20% of the curve (wsd only)")
    return Panel(pid, title, fig, note=note.strip(), tables=[table],
                 laws=_verdicts("learning curve", analyses, skipped, descriptive))


ChinchillaResult = Mapping[str, tuple[LawAnalysis, pl.DataFrame]]


def chinchilla_fits(study: Study, n_boot: int = 200) -> tuple[dict[str, tuple[LawAnalysis, pl.DataFrame]], str]:
    """One L(N, D) analysis per group of the keys that are neither size nor samples, where N and D both vary."""
    lcol, _ = loss_column(study)
    fin = _positive(study.finished, "n_params", "samples_seen", lcol, "flops_per_image")
    out: dict[str, tuple[LawAnalysis, pl.DataFrame]] = {}
    why = []
    for lab, part in groups(fin, group_keys(study, (*SIZE_KEYS, *SAMPLE_KEYS))):
        n_n, n_d = part.get_column("n_params").n_unique(), part.get_column("samples_seen").n_unique()
        pairs = part.select("n_params", "samples_seen").unique().height
        if n_n < 2 or n_d < 2 or pairs < MIN_CHINCHILLA_PAIRS:
            why.append(f"{lab}: {n_n} parameter counts, {n_d} sample budgets, {pairs} distinct pairs "
                       f"(needs >= 2, >= 2, >= {MIN_CHINCHILLA_PAIRS})")
            continue
        c = float(np.median((part["flops_per_image"] / part["n_params"]).to_numpy()))
        try:
            out[lab] = (analyze_chinchilla(part["n_params"].to_numpy(), part["samples_seen"].to_numpy(),
                                           part[lcol].to_numpy(), n_boot=n_boot, flops_per_param_sample=c), part)
        except ValueError as exc:
            why.append(f"{lab}: {exc}")
    return out, "; ".join(why)


def chinchilla_table(fits: ChinchillaResult, ltitle: str) -> Table:
    rows = []
    for lab, (a, _) in fits.items():
        f = a.law
        shown = f or a.chosen
        d = shown.diagnostics if shown is not None else None
        (ea, eb), eci = (f.exponents, f.exponents_ci) if isinstance(f, ChinchillaFit) else ((math.nan,) * 2, None)
        rows.append([lab, _verdict(a), shown.form.name if shown else "–", str(shown.n_points) if shown else "–"]
                    + [_param(f, p) for p in ("E", "A", "B", "C", "alpha", "beta")]
                    + [_fmt_ci(ea, eci["a"]) if eci else "–", _fmt_ci(eb, eci["b"]) if eci else "–",
                       f"{d.rmse_log:.3g}" if d else "–", f"{d.points_per_param:.1f}" if d else "–",
                       *_held_cells(a), _why(a)])
    return Table(title=f"Law: {ltitle} = E + A/N^alpha + B/D^beta (or the reduced form chosen)",
                 columns=["group", "verdict", "form", "points", "E", "A", "B", "C", "alpha", "beta",
                          "a (N_opt ∝ C^a)", "b (D_opt ∝ C^b)", "RMSE log L", "points/param", "held-out error",
                          "held-out in 95% PI", "why"], rows=rows,
                 note="N = parameters, D = samples seen; [95% bootstrap interval]; C is the coefficient of the "
                      "log-linear form L = C·N^-alpha·D^-beta. Compute-optimal allocation (a, b) under C = c·N·D "
                      "with c = flops_per_image / n_params exists only for a law with both power terms (full or "
                      "E = 0). Held out: the largest sample budget, refitted without it; PI = 95% prediction "
                      "interval.", id="table-fit-chinchilla")


def _laws_with_frontier(chinchilla: ChinchillaResult) -> dict[str, tuple[ChinchillaFit, pl.DataFrame]]:
    out = {}
    for lab, (a, part) in chinchilla.items():
        if isinstance(a.law, ChinchillaFit) and a.law.has_frontier:
            out[lab] = (a.law, part)
    return out


def _no_frontier_reason(chinchilla: ChinchillaResult, why: str) -> str:
    bits = []
    for lab, (a, _) in chinchilla.items():
        if a.law is None:
            bits.append(f"{lab}: {_why(a)}")
        elif not (isinstance(a.law, ChinchillaFit) and a.law.has_frontier):
            bits.append(f"{lab}: the law chosen ({a.law.form.name}) has no power term in both N and D, so no "
                        "compute-optimal trade-off")
    return "; ".join(bits + ([why] if why else []))


def compute_figure(study: Study, chinchilla: ChinchillaResult, n_boot: int = 200) -> Panel:
    pid = "compute"
    lcol, ltitle = loss_column(study)
    title = f"Compute: {ltitle} vs training FLOPs"
    fin = _positive(study.finished, "flops_per_image", "samples_seen", lcol)
    fin = fin.with_columns((pl.col("flops_per_image") * pl.col("samples_seen")).alias("train_flops"))
    if fin.get_column("train_flops").n_unique() < 2:
        return Panel(pid, title, note="Skipped: fewer than two distinct training-FLOP budgets among finished trials.")
    parts = groups(fin, group_keys(study, (*SIZE_KEYS, *SAMPLE_KEYS)))
    cmap = colors([lab for lab, _ in parts])
    fig = go.Figure()
    analyses: dict[str, LawAnalysis] = {}
    skipped: list[str] = []
    notes: list[str] = []
    for lab, part in parts:
        xs, ys = part["train_flops"].to_numpy(), part[lcol].to_numpy()
        color = cmap[lab]
        if lab in chinchilla:  # both N and D vary: the L(N, D) analysis speaks for this group
            a = chinchilla[lab][0]
            d_max = part["samples_seen"].max() if a.held is not None else None
            held = (part["samples_seen"] == d_max).to_numpy() if d_max is not None else np.zeros(len(xs), bool)
            hover = [f"{lab}<br>N={human(n)} D={human(d)}" for n, d in zip(part["n_params"], part["samples_seen"])]
            fig.add_trace(go.Scatter(x=xs[~held], y=ys[~held], mode="markers", name=lab, legendgroup=lab,
                                     text=[h for h, k in zip(hover, held) if not k],
                                     hovertemplate="%{text}<br>C=%{x:.3s} FLOPs<br>loss %{y:.4g}<extra></extra>",
                                     marker=dict(color=color, size=7, opacity=0.8)))
            if a.held is not None:
                h = a.held
                c_held = (part.filter(pl.col("samples_seen") == d_max)
                          .select("n_params", "flops_per_image"))
                fpi = dict(zip(c_held["n_params"].to_list(), c_held["flops_per_image"].to_list()))
                x_held = np.array([fpi.get(n, np.nan) * d for n, d in h.X])
                _draw_held(fig, h, x_held, lab, color)
            law = a.law
            if isinstance(law, ChinchillaFit) and law.has_frontier:
                grid = np.logspace(np.log10(xs.min()), np.log10(xs.max()), 100)
                front = law.frontier(grid)
                fig.add_trace(go.Scatter(x=grid, y=front["L"], mode="lines", name=f"{lab}: compute-optimal "
                                         f"frontier ({law.form.name} law)", legendgroup=lab,
                                         line=dict(color=color, dash="dot")))
            else:
                notes.append(f"{lab}: no frontier ({_no_frontier_reason({lab: chinchilla[lab]}, '')})")
            continue
        both = part["n_params"].n_unique() > 1 and part["samples_seen"].n_unique() > 1
        if both:  # N and D both vary but too few pairs for L(N, D): a law in C alone would mix them
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=lab, legendgroup=lab,
                                     marker=dict(color=color, size=7, opacity=0.8)))
            continue
        _points_and_law(fig, xs, ys, lab, color, n_boot, analyses, skipped, dict(size=7, opacity=0.8),
                        "{lab} law: {fit}")
    _layout(fig, title, "training FLOPs (flops_per_image × samples seen)", ltitle, logx=True, logy=True)
    fig.update_yaxes(range=data_range(fin[lcol].to_numpy()))
    tables = []
    if analyses:
        t = law_table(f"Law: {ltitle} vs training FLOPs", analyses, "C", "table-fit-compute")
        t.note = t.note.replace("{what}", "the largest compute per group")
        tables.append(t)
    note = _law_note(analyses, skipped) if analyses or skipped else ""
    if chinchilla:
        note += (" Dotted: the compute-optimal frontier of an L(N, D) law (drawn only where one was identified); "
                 "open diamonds: runs of the largest budget, held out; crosses: their predictions from the law "
                 "refitted without them, with 95% prediction intervals.")
    if notes:
        note += " " + "; ".join(notes) + "."
    return Panel(pid, title, fig, note=note.strip(), tables=tables,
                 laws=_verdicts(f"{ltitle} vs training FLOPs", analyses, skipped))


def _default_group(study: Study, fits: Mapping[str, Any]) -> str:
    keys = group_keys(study, (*SIZE_KEYS, *SAMPLE_KEYS))
    want = label(keys, [study.default(k) for k in keys])
    return want if want in fits else next(iter(fits))


def isoflop_figure(study: Study, chinchilla: ChinchillaResult, why: str) -> Panel:
    """Iso-FLOP curves of the L(N, D) law: solid within the trials' N range, dashed beyond."""
    pid, title = "isoflop", "Iso-FLOP curves of the L(N, D) law"
    _, ltitle = loss_column(study)
    tables = []
    if chinchilla:
        tables = [chinchilla_table(chinchilla, ltitle),
                  comparison_table("Model comparison: L(N, D)", {k: a for k, (a, _) in chinchilla.items()},
                                   "table-compare-chinchilla"),
                  held_out_table("Held-out prediction: L(N, D)", {k: a for k, (a, _) in chinchilla.items()},
                                 ["N", "D"], "table-heldout-chinchilla")]
        tables = [t for t in tables if t.rows]  # no held-out table without a law to check
    laws = [(v, f"L(N, D): {s}") for v, s in _verdicts(ltitle, {k: a for k, (a, _) in chinchilla.items()})]
    usable = _laws_with_frontier(chinchilla)
    if not usable:
        reason = _no_frontier_reason(chinchilla, why) if chinchilla else (
            f"needs parameters and samples both varying (>= 2 values each, >= {MIN_CHINCHILLA_PAIRS} distinct "
            f"pairs). {why}")
        return Panel(pid, title, note="Skipped: no L(N, D) law, so no iso-FLOP curves or frontier. " + reason,
                     tables=tables, laws=laws)
    lab = _default_group(study, usable)
    fit, part = usable[lab]
    lcol = loss_column(study)[0]
    budgets = (part["flops_per_image"] * part["samples_seen"]).to_numpy()
    n_lo, n_hi = part["n_params"].min(), part["n_params"].max()
    levels = np.logspace(np.log10(budgets.min()), np.log10(budgets.max()), 5)
    fig = go.Figure()
    inside: list[float] = []
    for i, C in enumerate(levels):
        prof = fit.isoflop_profile(C)
        color = PALETTE[i % len(PALETTE)]
        within = (prof["N"] >= n_lo) & (prof["N"] <= n_hi)
        fig.add_trace(go.Scatter(x=prof["N"], y=prof["L"], mode="lines", showlegend=False, hoverinfo="skip",
                                 line=dict(color=color, dash="dash", width=1)))
        fig.add_trace(go.Scatter(x=prof["N"][within], y=prof["L"][within], mode="lines", name=f"C = {C:.3g} FLOPs",
                                 line=dict(color=color)))
        inside += prof["L"][within].tolist()
        n_opt, d_opt = fit.compute_optimal(C)
        fig.add_trace(go.Scatter(x=[float(n_opt)], y=[float(fit.predict(n_opt, d_opt))], mode="markers",
                                 marker=dict(symbol="star", size=13, color=color), showlegend=False,
                                 hovertemplate="N_opt %{x:.3s}<br>loss %{y:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=part["n_params"].to_numpy(), y=part[lcol].to_numpy(), mode="markers", name="trials",
        marker=dict(color=np.log10(budgets), colorscale="Viridis", size=7, line=dict(width=0.5, color="white"),
                    colorbar=dict(title="log10 C", x=1.02, len=0.6))))
    _layout(fig, title, "parameters N", ltitle, logx=True, logy=True)
    fig.update_layout(legend=dict(x=1.12))
    fig.update_xaxes(range=data_range([n_lo / 10, n_hi * 10]))
    fig.update_yaxes(range=data_range(part[lcol].to_list() + inside))
    note = (f"Group {lab} ({fit.form.name} law). Solid: the iso-FLOP curve within the trials' parameter range; "
            "dashed: extrapolated. Stars: N_opt(C), which may lie outside the range run. Dots: trials coloured by "
            "their FLOPs.")
    return Panel(pid, title, fig, note=note, tables=tables, laws=laws)


def frontier_figure(study: Study, chinchilla: ChinchillaResult) -> Panel:
    pid, title = "frontier", "Compute-optimal frontier"
    usable = _laws_with_frontier(chinchilla)
    if not usable:
        return Panel(pid, title, note="Skipped: no L(N, D) law with a compute-optimal trade-off (see the iso-FLOP "
                                      "section for why).")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("N_opt(C): parameters", "D_opt(C): samples seen"))
    cmap = colors(list(usable))
    for lab, (fit, part) in usable.items():
        budgets = (part["flops_per_image"] * part["samples_seen"]).to_numpy()
        grid = np.logspace(np.log10(budgets.min()) - 0.5, np.log10(budgets.max()) + 0.5, 60)
        within = (grid >= budgets.min()) & (grid <= budgets.max())
        n_opt, d_opt = fit.compute_optimal(grid)
        a, b = fit.exponents
        for col, (yopt, ycol, expo) in enumerate(((n_opt, "n_params", a), (d_opt, "samples_seen", b)), start=1):
            fig.add_trace(go.Scatter(x=grid, y=yopt, mode="lines", legendgroup=lab, showlegend=False,
                                     line=dict(color=cmap[lab], dash="dash", width=1), hoverinfo="skip"),
                          row=1, col=col)
            fig.add_trace(go.Scatter(x=grid[within], y=yopt[within], mode="lines", name=f"{lab}: ∝ C^{expo:.2f}",
                                     legendgroup=lab, line=dict(color=cmap[lab]), showlegend=col == 1), row=1, col=col)
            fig.add_trace(go.Scatter(x=budgets, y=part[ycol].to_numpy(), mode="markers", name=f"{lab}: trials",
                                     legendgroup=lab, marker=dict(color=cmap[lab], size=6, opacity=0.6),
                                     showlegend=col == 1), row=1, col=col)
    _layout(fig, title, "training FLOPs C", "", logx=True, logy=True)
    fig.update_yaxes(title_text="N_opt", row=1, col=1)
    fig.update_yaxes(title_text="D_opt", row=1, col=2)
    return Panel(pid, title, fig, note="Lines: compute-optimal allocation of the L(N, D) law, solid over the "
                                       "budgets run, dashed beyond; dots: the trials run.")


# ---------------------------------------------------------------------------------------------
# Prediction pictures (arrays supplied by the caller)


def _png(img: np.ndarray) -> str:
    """uint8 (H, W, 3) -> PNG data URI (zlib only, no imaging library)."""
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _as_rgb(arr: Any, where: str) -> np.ndarray:
    a = np.asarray(arr, dtype=float)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3, 4):
        a = np.transpose(a, (1, 2, 0))  # CHW -> HWC
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"{where}: expected an HxWxC image with C in 1, 3, 4 (got shape {np.shape(arr)})")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: image contains NaN or inf")
    a = a[:, :, :3] if a.shape[2] == 4 else np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a
    return (np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


Pictures = Sequence[tuple[Any, Any]] | Mapping[Any, Any]


def prediction_grid(pictures: Pictures, title: str = "Next-block predictions pasted in place") -> go.Figure:
    """Lay out (k, image) pairs, images HxWxC (or HxW) in [0, 1]: one row per k, in order of appearance.

    A mapping ``{k: image or [images]}`` works too."""
    items: list[tuple[Any, Any]] = []
    if isinstance(pictures, Mapping):
        for k, v in pictures.items():
            imgs = v if isinstance(v, (list, tuple)) else [v]
            items += [(k, im) for im in imgs]
    else:
        for i, pair in enumerate(pictures):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"pictures[{i}]: expected a (k, image) pair")
            items.append((pair[0], pair[1]))
    if not items:
        raise ValueError("pictures is empty: expected (k, HxWxC array) pairs")
    rows: dict[Any, list[np.ndarray]] = {}
    for i, (k, img) in enumerate(items):
        rows.setdefault(k, []).append(_as_rgb(img, f"pictures[{i}] (k={k})"))
    n_cols = max(len(v) for v in rows.values())
    titles = [f"k={k}" if j == 0 else "" for k, v in rows.items() for j in range(n_cols)]
    fig = make_subplots(rows=len(rows), cols=n_cols, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.06)
    for r, (_, imgs) in enumerate(rows.items(), start=1):
        for c, img in enumerate(imgs, start=1):
            fig.add_trace(go.Image(source=_png(img), hoverinfo="skip"), row=r, col=c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor=None)
    fig.update_layout(template="plotly_white", title=dict(text=title, x=0.01), height=80 + 170 * len(rows),
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig


def predictions_panel(study: Study, pictures: Pictures | Callable[[Any], Pictures] | None) -> Panel:
    pid, title = "predictions", "Predictions"
    if pictures is None:
        return Panel(pid, title, note="No prediction pictures: pass pictures=[(k, HxWxC array in [0, 1]), ...] "
                                      "(e.g. from a trial checkpoint) to build_report.")
    try:
        pics = pictures(study.path) if callable(pictures) else pictures
        if pics is None or len(pics) == 0:
            return Panel(pid, title, note="No prediction pictures were produced.")
        return Panel(pid, title, prediction_grid(pics), note="Validation images with the model's next-block "
                                                             "predictions pasted in place, one row per k.")
    except Exception as exc:  # a broken picture hook must not lose the report
        return Panel(pid, title, note=f"Prediction pictures failed: {type(exc).__name__}: {exc}")


def panels(study: Study, n_boot: int = 200, pictures: Any = None) -> list[Panel]:
    """Every panel of a study's report, skipped ones included (figure None, with the reason)."""
    chinchilla, why = chinchilla_fits(study, n_boot)
    return [
        loss_curves(study),
        probe_vs_block_size(study),
        sample_efficiency(study),
        parameter_efficiency(study),
        compute_figure(study, chinchilla, n_boot),
        loss_scaling(study, "samples_seen", "samples seen", SAMPLE_KEYS, n_boot),
        loss_scaling(study, "n_params", "parameters", SIZE_KEYS, n_boot),
        learning_curve_laws(study, n_boot),
        isoflop_figure(study, chinchilla, why),
        frontier_figure(study, chinchilla),
        predictions_panel(study, pictures),
    ]
