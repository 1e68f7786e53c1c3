"""MAE-style ablation tables, a per-trial table and the failed-trials table.

An ablation table varies one swept key: one row per value, the default row (the ``[base]`` value
from study.toml) marked, other swept keys held at their defaults where the study ran them, else
shown as extra columns. Cells are mean ± 95% t-interval over seeds (just the mean with one seed),
and deltas are against the default row with the same extra-column values.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from .collect import FINISHED, StudyResults, sort_key

SAMPLE_KEYS = ("pretrain.samples",)
SIZE_KEYS = ("size", "model.size", "model.width", "model.depth", "model.num_heads", "model.mlp_ratio",
             "model.proj_hidden", "model.pred_width", "model.pred_depth", "model.pred_num_heads", "model.head_hidden")
PROBES = (("linear_top1", "linear top-1 (%)"), ("attentive_top1", "attentive top-1 (%)"))


# ---------------------------------------------------------------------------------------------
# Formatting


def short(key: str) -> str:
    leaf = key.split(".")[-1]
    return "k" if leaf == "block_size" else leaf


def fmt_value(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)


def label(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{short(k)}={fmt_value(v)}" for k, v in zip(keys, values)) or "all"


def human(n: float | None, unit: str = "") -> str:
    if n is None or not math.isfinite(n):
        return "–"
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def same(a: Any, b: Any) -> bool:
    """Value equality across TOML / parquet types: 4 == 4.0, "4" == 4 is False, NaN never equal."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(b, (list, tuple)):
        b = ", ".join(str(x) for x in b)
    return str(a) == str(b)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """Mean, t-interval half-width (NaN with one value) and count over the finite values."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return float("nan"), float("nan"), 0
    if n == 1:
        return float(arr[0]), float("nan"), 1
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * arr.std(ddof=1) / math.sqrt(n))
    return float(arr.mean()), half, n


def top1_scale(df: pl.DataFrame) -> float:
    """Top-1 stored as fractions (all <= 1) is shown in percent."""
    vals = [v for c, _ in PROBES if c in df.columns for v in df.get_column(c).drop_nulls().to_list()]
    return 100.0 if vals and max(vals) <= 1.0 else 1.0


def fmt_mean_ci(m: float, half: float, digits: str, half_digits: str | None = None) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{m:{digits}}" if not math.isfinite(half) else f"{m:{digits}} ± {half:{half_digits or digits}}"


# ---------------------------------------------------------------------------------------------
# Table object: rendered to Markdown (summary.md) and HTML (index.html) from the same cells.


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#!&])")


def md_escape(text: Any) -> str:
    """User text (study names, descriptions, values, errors) as literal Markdown on one line: every
    character that could start emphasis, code, a link, HTML, a table cell or a heading is backslash-
    escaped (CommonMark), newlines become spaces, and a leading list marker is escaped. Rendered, it
    reads as the original text."""
    s = " ".join(str(text).split())
    s = _MD_SPECIAL.sub(r"\\\1", s)
    # block starts (CommonMark): a list marker is followed by a space or ends the line, so numbers
    # such as -0.5 or 25.1 stay as they are
    if re.match(r"[-+](\s|$)", s) or re.fullmatch(r"=+", s):
        s = "\\" + s
    m = re.match(r"\d{1,9}([.)])(\s|$)", s)
    if m:
        s = s[: m.start(1)] + "\\" + s[m.start(1):]
    return s


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    marked: list[bool] = field(default_factory=list)  # default rows
    note: str = ""
    id: str = ""

    def to_markdown(self) -> str:
        cell = md_escape  # cells hold user text (swept values, trial ids, errors): escaped, one line each

        out = [f"### {self.title}", ""]
        if self.note:
            out += [self.note, ""]
        out.append("| " + " | ".join(cell(c) for c in self.columns) + " |")
        out.append("|" + "|".join("---" for _ in self.columns) + "|")
        for i, row in enumerate(self.rows):
            cells = [cell(c) for c in row]
            if i < len(self.marked) and self.marked[i]:
                cells[0] = f"**{cells[0]}**"
            out.append("| " + " | ".join(cells) + " |")
        return "\n".join(out) + "\n"

    def to_html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for i, row in enumerate(self.rows):
            cls = ' class="default"' if i < len(self.marked) and self.marked[i] else ""
            body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        tid = f' id="{html.escape(self.id)}"' if self.id else ""
        return (f'<div class="table-wrap"{tid} data-table="{html.escape(self.id)}"><h3>{html.escape(self.title)}</h3>'
                f'{note}<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')


# ---------------------------------------------------------------------------------------------
# Slicing a study for one key


def at_defaults(study: StudyResults, df: pl.DataFrame, key: str,
                exclude: Sequence[str] = ()) -> tuple[pl.DataFrame, list[str]]:
    """Hold every other swept key at its default where the study ran that default.

    Returns the sliced frame and the other swept keys that could not be held (their default was not
    run, or is unknown); callers show those as extra columns or lines."""
    free = []
    for other in study.swept:
        if other == key or other in exclude:
            continue
        default = study.default(other)
        col = df.get_column(other).to_list()
        mask = [default is not None and same(v, default) for v in col]
        if any(mask):
            df = df.filter(pl.Series(mask))
        else:
            free.append(other)
    return df, free


def ablation_table(study: StudyResults, key: str, level: float = 0.95) -> Table:
    df, free = at_defaults(study, study.results, key)
    fin = df.filter(pl.col("status") == FINISHED)
    scale = top1_scale(study.finished)
    probes = [(c, t if scale == 100.0 else t.replace(" (%)", "")) for c, t in PROBES
              if study.finished.get_column(c).drop_nulls().len() > 0]
    default = study.default(key)
    cols = [short(key)] + [short(k) for k in free] + ["n"]
    for _, title in probes:
        cols += [title, "Δ"]
    cols += ["train loss", "Δ loss", "params", "FLOP/img", "train FLOPs"]

    groups = sorted({tuple(r) for r in df.select(free + [key]).iter_rows()},
                    key=lambda t: tuple(sort_key(v) for v in t))

    def stats_for(values: tuple) -> dict[str, Any]:
        mask = [all(same(a, b) for a, b in zip(row, values)) for row in fin.select(free + [key]).iter_rows()]
        sub = fin.filter(pl.Series(mask, dtype=pl.Boolean)) if fin.height else fin
        all_mask = [all(same(a, b) for a, b in zip(row, values)) for row in df.select(free + [key]).iter_rows()]
        n_all = int(sum(all_mask))
        out: dict[str, Any] = {"n_fin": sub.height, "n_bad": n_all - sub.height}
        for c in [p for p, _ in probes] + ["train_loss", "n_params", "flops_per_image"]:
            out[c] = mean_ci(sub.get_column(c).to_list(), level)
        train = (sub.get_column("flops_per_image") * sub.get_column("samples_seen")).to_list() if sub.height else []
        out["train_flops"] = mean_ci(train, level)
        return out

    computed = {g: stats_for(g) for g in groups}
    rows, marked = [], []
    for g in groups:
        s = computed[g]
        ref = next((computed[h] for h in groups if h[:-1] == g[:-1] and default is not None and same(h[-1], default)),
                   None)
        is_default = default is not None and same(g[-1], default)
        n = str(s["n_fin"]) + (f" (+{s['n_bad']} failed)" if s["n_bad"] else "")
        row = [fmt_value(g[-1]) + (" (default)" if is_default else "")] + [fmt_value(v) for v in g[:-1]] + [n]
        for c, _ in probes:
            m, half, _ = s[c]
            row.append(fmt_mean_ci(m * scale, half * scale, ".1f"))
            row.append(_delta(m, ref[c][0] if ref else float("nan"), scale, ".1f", is_default))
        m, half, _ = s["train_loss"]
        row.append(fmt_mean_ci(m, half, ".4g", ".2g"))
        row.append(_delta(m, ref["train_loss"][0] if ref else float("nan"), 1.0, ".3g", is_default))
        row += [human(s["n_params"][0]), human(s["flops_per_image"][0]), human(s["train_flops"][0])]
        rows.append(row)
        marked.append(is_default)
    held = [f"{short(k)}={fmt_value(study.default(k))}" for k in study.swept if k != key and k not in free]
    note_bits = []
    if held:
        note_bits.append("others held at their defaults: " + ", ".join(held))
    if default is None:
        note_bits.append(f"no default for {key} in study.toml [base]: no deltas")
    elif not any(same(g[-1], default) for g in groups):
        note_bits.append(f"default {short(key)}={fmt_value(default)} was not run: no deltas")
    note_bits.append("mean ± 95% t-interval over seeds" if any(computed[g]["train_loss"][2] > 1 for g in groups)
                     else "one seed per value: means only")
    return Table(title=f"Ablation: {key}", columns=cols, rows=rows, marked=marked, note="; ".join(note_bits) + ".",
                 id=f"table-ablation-{key}")


def _delta(m: float, ref: float, scale: float, digits: str, is_default: bool) -> str:
    if is_default:
        return "·"
    if not (math.isfinite(m) and math.isfinite(ref)):
        return "–"
    return f"{(m - ref) * scale:+{digits}}"


def ablation_tables(study: StudyResults) -> list[Table]:
    return [ablation_table(study, key) for key in study.swept if study.results.get_column(key).n_unique() > 1]


def trials_table(study: StudyResults, limit: int = 200) -> Table:
    """One row per finished trial (first ``limit``), sorted by swept values then seed."""
    fin = study.finished.sort([*study.swept, "seed"], nulls_last=True) if study.finished.height else study.finished
    scale = top1_scale(study.finished)
    cols = ["trial"] + [short(k) for k in study.swept] + ["seed", "linear top-1", "attentive top-1", "train loss",
                                                          "val loss", "samples", "params", "FLOP/img", "wall (s)"]
    rows = []
    for r in fin.head(limit).iter_rows(named=True):
        rows.append([str(r["trial_id"])] + [fmt_value(r[k]) for k in study.swept] + [
            fmt_value(r["seed"]),
            f"{r['linear_top1'] * scale:.1f}" if r["linear_top1"] is not None else "–",
            f"{r['attentive_top1'] * scale:.1f}" if r["attentive_top1"] is not None else "–",
            f"{r['train_loss']:.4g}" if r["train_loss"] is not None else "–",
            f"{r['val_loss']:.4g}" if r["val_loss"] is not None else "–",
            human(r["samples_seen"]), human(r["n_params"]), human(r["flops_per_image"]),
            f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "–",
        ])
    note = f"first {limit} of {fin.height} finished trials" if fin.height > limit else ""
    return Table(title="Finished trials", columns=cols, rows=rows, note=note, id="table-trials")


def failed_table(study: StudyResults) -> Table | None:
    bad = study.failed
    if bad.height == 0:
        return None
    cols = ["trial", "config hash"] + [short(k) for k in study.swept] + ["seed", "status", "error"]
    rows = []
    for r in bad.iter_rows(named=True):
        error = _one_line(r["error"])
        rows.append([str(r["trial_id"]), str(r["config_hash"])] + [fmt_value(r[k]) for k in study.swept]
                    + [fmt_value(r["seed"]), str(r["status"]), error])
    return Table(title=f"Trials not finished ({bad.height})", columns=cols, rows=rows,
                 note="Failed, running or unreadable trials, with their error; "
                      "excluded from the figures and ablations.",
                 id="table-failed")


def _one_line(error: str | None, limit: int = 500) -> str:
    """A traceback becomes its last line (the exception); anything longer than ``limit`` is cut."""
    text = (error or "").strip()
    if not text:
        return "(no error recorded)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    text = lines[-1] if text.startswith("Traceback") else " ".join(lines)
    return text if len(text) <= limit else text[: limit - 1] + "…"
