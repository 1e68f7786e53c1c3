"""What every report panel shares: the ``Panel`` type, the page's plot layout and colours, grouping
trials into lines by their swept keys, and the small data helpers the figures use."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.colors import qualitative

from .collect import REPLICATE_KEYS, StudyResults
from .tables import SAMPLE_KEYS, SIZE_KEYS, Table, label, mean_ci

PALETTE = qualitative.Plotly + qualitative.D3 + qualitative.Dark24
PROBE_STYLE = {"linear_top1": ("linear", "solid"), "attentive_top1": ("attentive", "dash")}


@dataclass
class Panel:
    id: str
    title: str
    figure: go.Figure | None = None
    note: str = ""
    tables: list[Table] = field(default_factory=list)
    laws: list[tuple[str, str]] = field(default_factory=list)  # (verdict, sentence) per fitted group


def layout(fig: go.Figure, title: str, x: str, y: str, logx: bool = False, logy: bool = False,
            height: int = 460) -> go.Figure:
    fig.update_layout(template="plotly_white", title=dict(text=title, x=0.01), height=height,
                      margin=dict(l=70, r=20, t=60, b=60), hovermode="closest",
                      legend=dict(font=dict(size=11), itemsizing="constant"))
    fig.update_xaxes(title_text=x, type="log" if logx else "linear")
    fig.update_yaxes(title_text=y, type="log" if logy else "linear")
    return fig


def colors(labels: Sequence[str]) -> dict[str, str]:
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(dict.fromkeys(labels))}


def group_keys(study: StudyResults, exclude: Sequence[str] = ()) -> list[str]:
    return [k for k in study.swept if k not in exclude and k not in REPLICATE_KEYS]


def groups(df: pl.DataFrame, keys: Sequence[str]) -> list[tuple[str, pl.DataFrame]]:
    """(label, rows) per combination of ``keys``, in sorted order; one ("all", df) group without keys."""
    if not keys or df.height == 0:
        return [("all", df)] if df.height else []
    parts = df.sort(list(keys), nulls_last=True).partition_by(list(keys), maintain_order=True, as_dict=True)
    return [(label(keys, vals), part) for vals, part in parts.items()]


def loss_column(study: StudyResults) -> tuple[str, str]:
    fin = study.finished
    if fin.height and fin.get_column("val_loss").is_not_null().all():
        return "val_loss", "final val loss"
    return "train_loss", "final train loss"


def probe_columns(df: pl.DataFrame) -> list[str]:
    return [c for c in PROBE_STYLE if df.get_column(c).drop_nulls().len() > 0]


def mean_by_x(df: pl.DataFrame, x: str, y: str) -> tuple[list[float], list[float], list[float]]:
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


def positive(df: pl.DataFrame, *cols: str) -> pl.DataFrame:
    return df.filter(pl.all_horizontal([pl.col(c).is_not_null() & pl.col(c).is_finite() & (pl.col(c) > 0)
                                        for c in cols]))


def varies_within(parts: list[tuple[str, pl.DataFrame]], col: str, at_least: int = 2) -> bool:
    return any(p.get_column(col).n_unique() >= at_least for _, p in parts)



def block_key(study: StudyResults) -> str:
    return next((k for k in study.swept if k.split(".")[-1] == "block_size"), "block_size")



def several_seeds(rows: pl.DataFrame) -> bool:
    """Whether `rows` hold more than one seed: only then is there a spread over seeds to show."""
    return "seed" in rows.columns and rows.get_column("seed").n_unique() > 1


def error_bars_note(rows: pl.DataFrame) -> str:
    return "Error bars: 95% t-interval over seeds." if several_seeds(rows) else "One seed: no error bars."



def draw_band(fig: go.Figure, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, color: str, group: str, **kw: Any) -> None:
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



ENCODER = ("n_params_encoder", "encoder parameters")
WHOLE_MODEL = ("n_params", "parameters (whole model: the study scales the predictor and heads with the encoder)")


def param_axis(study: StudyResults) -> tuple[str, str]:
    """(column, name) of the one parameter count the figures, laws and sentences use: the encoder's,
    unless the study scales the rest of the model with it (the non-encoder parameters vary along with the
    encoder's within a configuration), then the whole model's. A count that changes only with k (the pixel
    head) or not at all would make a law on total parameters describe the wrong thing."""
    fin = study.finished
    if "n_params_encoder" not in fin.columns or fin.get_column("n_params_encoder").drop_nulls().len() == 0:
        return WHOLE_MODEL
    fin = fin.filter(pl.col("n_params_encoder").is_not_null() & pl.col("n_params").is_not_null()).with_columns(
        (pl.col("n_params") - pl.col("n_params_encoder")).alias("_rest"))
    for _, part in groups(fin, group_keys(study, (*SIZE_KEYS, *SAMPLE_KEYS))):
        for _, same_k in groups(part, ["block_size"]):
            if same_k["n_params_encoder"].n_unique() > 1 and same_k["_rest"].n_unique() > 1:
                return WHOLE_MODEL
    return ENCODER
