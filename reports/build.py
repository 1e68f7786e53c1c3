"""Build a study's report: ``report/index.html`` (one self-contained page) and ``report/summary.md``.

The page embeds plotly.js once (inline by default, so it works offline; ``plotlyjs="cdn"`` links
it instead) and each figure as JSON in a ``<script type="application/json">`` beside its div
(``id="fig-<panel id>"``, ``data-figure="<panel id>"``). One script renders them all, then sets
``data-plots-rendered`` / ``data-plots-expected`` / ``data-render-done`` on ``<body>``; a
``window.onerror`` hook writes any JavaScript error into ``#xtra-js-errors`` and counts them in
``data-js-errors``. Tests and headless browsers read those attributes.

Every file is written atomically (temporary file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
import polars as pl

from xtra.fileio import atomic_write_bytes

from .collect import StudyError, StudyResults, collect_results
from .evaluation import evaluation
from .figures import PALETTE, Panel, loss_column, panels
from .halving import ladder_panels
from .isoflop_panels import isoflop_panels
from .tables import Table, ablation_tables, failed_table, fmt_value, md_escape, short, top1_scale, trials_table

IMAGE_FORMATS = ("png", "svg")
PLOTLYJS_MODES = ("inline", "cdn")

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328;
       background: #fff; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 1px solid #d0d7de;
padding-bottom: 4px; } h3 { font-size: 16px; margin: 20px 0 6px; }
.meta { color: #59636e; font-size: 13px; } .note { color: #59636e; font-size: 13px; margin: 4px 0 8px; }
.notes li { color: #9a6700; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 14px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
tr.default td { background: #fff8c5; font-weight: 600; }
.table-wrap { overflow-x: auto; }
#table-failed td:last-child, [data-table$="table-failed"] td:last-child { white-space: normal; text-align: left;
  min-width: 320px; color: #cf222e; font-family: ui-monospace, monospace; font-size: 12px; }
.figure { width: 100%; min-height: 300px; }
nav a { margin-right: 12px; font-size: 13px; }
#xtra-js-errors:empty { display: none; }
#xtra-js-errors { color: #cf222e; border: 1px solid #cf222e; padding: 8px; white-space: pre-wrap; }
.study { border-top: 3px solid #0969da; margin-top: 40px; }
"""

ERROR_HOOK = """
window.xtraErrors = [];
function xtraError(msg) {
  window.xtraErrors.push(String(msg));
  var box = document.getElementById('xtra-js-errors');
  if (box) { box.textContent = window.xtraErrors.join('\\n'); }
  if (document.body) { document.body.setAttribute('data-js-errors', String(window.xtraErrors.length)); }
}
window.onerror = function (message, source, line, col) { xtraError(message + ' (' + source + ':' + line + ')'); };
window.addEventListener('unhandledrejection', function (e) { xtraError('unhandled rejection: ' + e.reason); });
"""

RENDER = """
(function () {
  var body = document.body;
  var nodes = document.querySelectorAll('[data-xtra-figure]');
  body.setAttribute('data-plots-expected', String(nodes.length));
  body.setAttribute('data-plots-rendered', '0');
  body.setAttribute('data-js-errors', String(window.xtraErrors.length));
  if (typeof Plotly === 'undefined') {
    xtraError('plotly.js did not load (offline with --plotlyjs cdn?)');
    body.setAttribute('data-render-done', '1');
    return;
  }
  var rendered = 0;
  var config = {responsive: true, displaylogo: false};
  var jobs = Array.prototype.map.call(nodes, function (div) {
    try {
      var spec = JSON.parse(document.getElementById(div.id + '-json').textContent);
      return Plotly.newPlot(div, spec.data, spec.layout, config).then(function () {
        if (div.querySelector('svg.main-svg')) {
          rendered += 1;
          div.setAttribute('data-rendered', '1');
          body.setAttribute('data-plots-rendered', String(rendered));
        } else { xtraError(div.id + ': rendered without an svg'); }
      }, function (err) { xtraError(div.id + ': ' + err); });
    } catch (err) { xtraError(div.id + ': ' + err); return Promise.resolve(); }
  });
  Promise.all(jobs).then(function () { body.setAttribute('data-render-done', '1'); });
})();
"""


# ---------------------------------------------------------------------------------------------
# Files


def atomic_write(path: Path, data: str | bytes) -> Path:
    return atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)


def _browser_env() -> None:
    """kaleido 1.x drives a Chromium: point it at the system one unless told otherwise."""
    if "BROWSER_PATH" not in os.environ:
        found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if found:
            os.environ["BROWSER_PATH"] = found


def write_images(figs: dict[str, go.Figure], folder: Path, fmt: str) -> tuple[list[Path], str]:
    """Static images through kaleido, written atomically; returns (paths, note). Never raises."""
    if not figs:
        return [], ""
    _browser_env()
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".images.", dir=folder))
    try:
        tmp_paths = [staging / f"{pid}.{fmt}" for pid in figs]
        if hasattr(pio, "write_images"):  # plotly >= 6.1: one browser session for every figure
            pio.write_images(list(figs.values()), tmp_paths, format=fmt, width=1100)
        else:
            for fig, tmp in zip(figs.values(), tmp_paths):
                pio.write_image(fig, tmp, format=fmt, width=1100)
        done = []
        for tmp in tmp_paths:
            dest = folder / tmp.name
            os.replace(tmp, dest)
            done.append(dest)
        return done, ""
    except Exception as exc:  # images are optional; the HTML report must still come out
        first = (str(exc).strip().splitlines() or [""])[0]
        return [], f"{fmt.upper()} images skipped: kaleido could not render ({type(exc).__name__}: {first[:300]})"
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# HTML pieces


def _esc(s: Any) -> str:
    return html.escape(str(s))


def _figure_html(panel: Panel, prefix: str, image: Path | None = None) -> str:
    fid = f"{prefix}fig-{panel.id}"
    spec = pio.to_json(panel.figure, validate=False, remove_uids=True).replace("</", "<\\/")
    parts = [f'<section class="panel" id="{prefix}sec-{panel.id}"><h2>{_esc(panel.title)}</h2>',
             f'<div class="figure" id="{fid}" data-figure="{_esc(panel.id)}" data-xtra-figure></div>',
             f'<script type="application/json" id="{fid}-json">{spec}</script>']
    if panel.note:
        parts.append(f'<p class="note">{_esc(panel.note)}</p>')
    if image is not None:
        parts.append(f'<p class="note">Static image: <a href="{_esc(image)}">{_esc(image)}</a></p>')
    parts += [_table_html(t, prefix) for t in panel.tables]
    parts.append("</section>")
    return "\n".join(parts)


def _table_html(table: Table, prefix: str) -> str:
    if prefix and table.id:
        table = Table(table.title, table.columns, table.rows, table.marked, table.note, prefix + table.id)
    return table.to_html()


def _setup_html(study: StudyResults) -> str:
    if not study.swept:
        return '<p class="note">No swept keys: a single configuration.</p>'
    rows = []
    for key in study.swept:
        values = study.axes.get(key) or study.results.get_column(key).unique().to_list()
        moving = study.companions.get(key)
        name = f"{key} (with {', '.join(moving)})" if moving else key
        rows.append([name, ", ".join(fmt_value(v) for v in values), fmt_value(study.default(key))])
    seeds = study.results.get_column("seed").drop_nulls().unique().sort().to_list()
    rows.append(["seed", ", ".join(fmt_value(s) for s in seeds) or "–", "(replicates)"])
    return Table("Swept keys", ["key", "values", "default"], rows, id="table-setup").to_html()


def _counts(study: StudyResults) -> dict[str, int]:
    status = study.results.get_column("status").fill_null("unknown").to_list()
    out: dict[str, int] = {"trials": len(status)}
    for s in status:
        out[s] = out.get(s, 0) + 1
    return out


def _study_body(study: StudyResults, pans: list[Panel], tables: list[Table], notes: list[str], prefix: str,
                images: dict[str, Path], heading: str = "h1") -> str:
    counts = _counts(study)
    count_text = ", ".join(f"{v} {k}" for k, v in counts.items())
    shown = [p for p in pans if p.figure is not None]
    skipped = [p for p in pans if p.figure is None]
    nav = "".join(f'<a href="#{prefix}sec-{p.id}">{_esc(p.title)}</a>' for p in shown)
    out = [f'<{heading}>{_esc(study.name)}</{heading}>']
    if study.description:
        out.append(f"<p>{_esc(study.description)}</p>")
    preset = f" · preset {_esc(study.preset)}" if study.preset else ""
    size = f" · size {_esc(study.size)}" if study.size else ""
    out.append(f'<p class="meta">{_esc(study.path)} · {count_text} · read from {_esc(study.source)}{size}{preset}</p>')
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    out.append(f"<nav>{nav}</nav>")
    out.append(_setup_html(study))
    ablations = [t for t in tables if t.id.startswith("table-ablation")]
    if ablations:
        out.append(f'<h2 id="{prefix}ablations">Ablations</h2>')
        out += [_table_html(t, prefix) for t in ablations]
    failed = [t for t in tables if t.id == "table-failed"]
    out += [f'<h2 id="{prefix}failed">Trials not finished</h2>' + _table_html(t, prefix) for t in failed]
    out += [_figure_html(p, prefix, images.get(p.id)) for p in shown]
    out += _laws_html(pans, prefix)  # after the figures: one line per fitted group can run long
    rest = [t for t in tables if t not in ablations and t not in failed]
    if rest:
        out.append(f'<h2 id="{prefix}trials">Trials</h2>')
        out += [_table_html(t, prefix) for t in rest]
    if skipped:
        out.append(f'<h2 id="{prefix}skipped">Not shown</h2><ul>')
        out += [f'<li data-skipped="{_esc(p.id)}"><b>{_esc(p.title)}</b>: {_esc(p.note)}</li>' for p in skipped]
        out.append("</ul>")
        out += [_table_html(t, prefix) for p in skipped for t in p.tables]  # e.g. why an L(N, D) fit is no law
    return "\n".join(out)


def _laws_html(pans: Sequence[Panel], prefix: str) -> list[str]:
    """Every fitted group's verdict (law, descriptive fit, or no law and why), before the figures."""
    laws = [(v, s) for p in pans for v, s in p.laws]
    if not laws:
        return []
    items = "".join(f'<li data-law="{_esc(v)}"><b>{_esc(v)}</b>: {_esc(s)}</li>' for v, s in laws)
    return [f'<h2 id="{prefix}laws">Scaling laws</h2>',
            '<p class="note">A fit is stated as a law only when the form chosen by cross-validation is identifiable '
            '(see each fit table); otherwise the points are shown and no curve, frontier or iso-FLOP curve is drawn '
            'from it.</p>', f'<ul class="laws">{items}</ul>']


def _plotlyjs_tag(mode: str) -> str:
    if mode == "inline":
        return "<script>" + plotly.offline.get_plotlyjs() + "</script>"
    version = plotly.offline.get_plotlyjs_version()
    return f'<script src="https://cdn.plot.ly/plotly-{version}.min.js" charset="utf-8"></script>'


def render_page(title: str, body: str, plotlyjs: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_esc(title)}</title><style>{CSS}</style><script>{ERROR_HOOK}</script>"
        f"{_plotlyjs_tag(plotlyjs)}</head>\n<body><main>\n{body}\n"
        f'<pre id="xtra-js-errors"></pre><p class="meta">Generated by xtra reports, {stamp}.</p>'
        f"</main>\n<script>{RENDER}</script>\n</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# Markdown


def _fit_tables(pans: Sequence[Panel]) -> list[Table]:
    return [t for p in pans for t in p.tables]


def summary_markdown(study: StudyResults, pans: Sequence[Panel], tables: Sequence[Table], notes: Sequence[str],
                     level: int = 1) -> str:
    h = "#" * level
    counts = _counts(study)
    e = md_escape  # user text: the study's name, description, path, values, and sentences naming them
    out = [f"{h} {e(study.name)}", ""]
    if study.description:
        out += [e(study.description), ""]
    out += [f"Study directory {e(study.path)}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".", ""]
    if study.swept:
        out += ["Swept: " + "; ".join(f"`{k}` (default {e(fmt_value(study.default(k)))})" for k in study.swept)
                + ".", ""]
    out += [f"- {e(n)}" for n in notes] + ([""] if notes else [])
    for t in tables:
        out.append(t.to_markdown())
    laws = [(v, s) for p in pans for v, s in p.laws]
    if laws:
        out += [f"{h}# Scaling laws", ""] + [f"- **{e(v)}**: {e(s)}" for v, s in laws] + [""]
    for t in _fit_tables(pans):
        out.append(t.to_markdown())
    skipped = [p for p in pans if p.figure is None]
    if skipped:
        out += [f"{h}# Figures not shown", ""] + [f"- {e(p.title)}: {e(p.note)}" for p in skipped] + [""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# Entry points


def check_options(images: str | None, plotlyjs: str, n_boot: int, spell: Any = lambda key: f"{key}=") -> None:
    """The report's options, checked in one place for the CLI and the API (ValueError, one line).
    ``spell(key)`` is how the caller names an option: ``images=`` here, ``--images `` in the CLI."""
    if images is not None and images not in IMAGE_FORMATS:
        raise ValueError(f"{spell('images')}{images!r}: expected one of {', '.join(IMAGE_FORMATS)} (or none)")
    if plotlyjs not in PLOTLYJS_MODES:
        raise ValueError(f"{spell('plotlyjs')}{plotlyjs!r}: expected one of {', '.join(PLOTLYJS_MODES)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise ValueError(f"{spell('n_boot')}{n_boot!r}: expected an integer >= 0")


def _study_tables(study: StudyResults) -> list[Table]:
    tables = ablation_tables(study)
    failed = failed_table(study)
    if failed is not None:
        tables.append(failed)
    if study.finished.height:
        tables.append(trials_table(study))
    return tables


def _prepare(study_dir: str | Path, out: Path | None, images: str | None, pictures: Any, n_boot: int,
             prefix: str) -> tuple[StudyResults, list[Panel], list[Table], list[str], dict[str, Path]]:
    study = collect_results(study_dir)
    pans = panels(study, n_boot=n_boot, pictures=pictures)
    pans += ladder_panels(study_dir)  # a halving search's rung ladder (none otherwise)
    pans += isoflop_panels(study, n_boot=n_boot)  # trials on isoFLOP lines: three approaches, multiplier, extrapolation
    tables = _study_tables(study)
    notes = list(study.notes)
    eval_panels, eval_tables, efficiency = evaluation(study)
    pans += eval_panels
    tables += eval_tables
    notes += [f"Efficiency: {s}" for s in efficiency]
    if study.finished.height == 0:
        notes.append("No finished trials yet: figures and ablations are empty; see the trials not finished.")
    image_paths: dict[str, Path] = {}
    if images and out is not None:
        figs = {f"{prefix}{p.id}": p.figure for p in pans if p.figure is not None}
        written, note = write_images(figs, out / "figures", images)
        if note:
            notes.append(note)
        image_paths = {p.stem[len(prefix):]: p.relative_to(out) for p in written}
    return study, pans, tables, notes, image_paths


def build_report(study_dir: str | Path, out: str | Path | None = None, images: str | None = None,
                 plotlyjs: str = "inline", pictures: Any = None, n_boot: int = 200) -> Path:
    """Write ``<out>/index.html`` and ``<out>/summary.md`` (out defaults to ``<study_dir>/report``).

    images: None, "png" or "svg" (static copies under ``<out>/figures/`` via kaleido; skipped with
    a note when kaleido or Chromium fails). plotlyjs: "inline" (offline) or "cdn". pictures: (k,
    HxWxC array in [0, 1]) pairs, a callable ``f(study_dir) -> pairs``, or None. n_boot: bootstrap
    refits per scaling law. Returns the path of index.html; raises StudyError on a bad study dir."""
    check_options(images, plotlyjs, n_boot)
    out_dir = Path(out) if out is not None else Path(study_dir) / "report"
    study, pans, tables, notes, image_paths = _prepare(study_dir, out_dir, images, pictures, n_boot, "")
    body = _study_body(study, pans, tables, notes, "", image_paths)
    index = atomic_write(out_dir / "index.html", render_page(f"xtra report: {study.name}", body, plotlyjs))
    atomic_write(out_dir / "summary.md", summary_markdown(study, pans, tables, notes))
    return index


def _overview(studies: Sequence[StudyResults]) -> Table:
    rows = []
    for s in studies:
        counts = _counts(s)
        fin = s.finished
        scale = top1_scale(fin)
        best = []
        for col in ("linear_top1", "attentive_top1"):
            ok = fin.filter(pl.col(col).is_not_null())
            if ok.height:
                r = ok.sort(col, descending=True).row(0, named=True)
                where = ", ".join(f"{short(k)}={fmt_value(r[k])}" for k in s.swept)
                best.append(f"{r[col] * scale:.1f}" + (f" ({where})" if where else ""))
            else:
                best.append("–")
        lcol, _ = loss_column(s)
        losses = fin.get_column(lcol).drop_nulls()
        rows.append([s.name, str(counts["trials"]), str(counts.get("finished", 0)),
                     str(counts["trials"] - counts.get("finished", 0)), ", ".join(short(k) for k in s.swept) or "–",
                     *best, f"{losses.min():.4g}" if losses.len() else "–"])
    return Table("Studies", ["study", "trials", "finished", "not finished", "swept", "best linear top-1",
                             "best attentive top-1", "lowest final loss"], rows, id="table-studies")


def _compare_figures(studies: Sequence[StudyResults]) -> list[Panel]:
    out = []
    fig = go.Figure()
    for i, s in enumerate(studies):
        lcol, _ = loss_column(s)
        fin = s.finished.filter(pl.col(lcol).is_not_null() & (pl.col("flops_per_image") > 0)
                                & (pl.col("samples_seen") > 0))
        if fin.height:
            c = (fin["flops_per_image"] * fin["samples_seen"]).to_list()
            fig.add_trace(go.Scatter(x=c, y=fin[lcol].to_list(), mode="markers", name=s.name,
                                     marker=dict(color=PALETTE[i % len(PALETTE)], size=7, opacity=0.8)))
    if fig.data:
        fig.update_layout(template="plotly_white", title=dict(text="Final loss vs training FLOPs, all studies", x=0.01),
                          height=460, margin=dict(l=70, r=20, t=60, b=60))
        fig.update_xaxes(type="log", title_text="training FLOPs")
        fig.update_yaxes(type="log", title_text="final loss")
        out.append(Panel("compare-compute", "All studies: final loss vs training FLOPs", fig))
    fig = go.Figure()
    for i, s in enumerate(studies):
        fin = s.finished
        scale = top1_scale(fin)
        for col, dash in (("linear_top1", "solid"), ("attentive_top1", "dash")):
            ok = fin.filter(pl.col(col).is_not_null() & pl.col("block_size").is_not_null())
            if ok.get_column("block_size").n_unique() < 2:
                continue
            agg = ok.group_by("block_size").agg(pl.col(col).mean()).sort("block_size")
            fig.add_trace(go.Scatter(x=agg["block_size"].to_list(), y=(agg[col] * scale).to_list(),
                                     mode="lines+markers", name=f"{s.name}, {col.split('_')[0]}",
                                     line=dict(color=PALETTE[i % len(PALETTE)], dash=dash)))
    if fig.data:
        fig.update_layout(template="plotly_white", title=dict(text="Probe top-1 vs block size, all studies", x=0.01),
                          height=460, margin=dict(l=70, r=20, t=60, b=60))
        fig.update_xaxes(type="log", title_text="block size k")
        fig.update_yaxes(title_text="top-1 (mean over trials)")
        out.append(Panel("compare-probe-vs-k", "All studies: probe top-1 vs block size", fig))
    return out


def compare_reports(study_dirs: Sequence[str | Path], out: str | Path, images: str | None = None,
                    plotlyjs: str = "inline", n_boot: int = 200) -> Path:
    """Several studies on one page: an overview table, shared figures, then each study's report.

    Figure ids are prefixed per study (``s0-fig-compute``, ``s1-fig-compute``, ...)."""
    check_options(images, plotlyjs, n_boot)
    if len(study_dirs) < 1:
        raise ValueError("compare_reports needs at least one study directory")
    out_dir = Path(out)
    prepared = [_prepare(d, out_dir, images, None, n_boot, f"s{i}-") for i, d in enumerate(study_dirs)]
    studies = [p[0] for p in prepared]
    shared = _compare_figures(studies)
    body = ["<h1>xtra: study comparison</h1>", _overview(studies).to_html()]
    body += [_figure_html(p, "") for p in shared]
    md = ["# xtra: study comparison", "", _overview(studies).to_markdown()]
    for i, (study, pans, tables, notes, image_paths) in enumerate(prepared):
        body.append(f'<div class="study" id="study-{i}" data-study="{_esc(study.name)}">')
        body.append(_study_body(study, pans, tables, notes, f"s{i}-", image_paths, heading="h2"))
        body.append("</div>")
        md.append(summary_markdown(study, pans, tables, notes, level=2))
    index = atomic_write(out_dir / "index.html", render_page("xtra: study comparison", "\n".join(body), plotlyjs))
    atomic_write(out_dir / "summary.md", "\n".join(md).rstrip() + "\n")
    return index


__all__ = ["build_report", "compare_reports", "render_page", "summary_markdown", "atomic_write",
           "write_images", "StudyError", "IMAGE_FORMATS", "PLOTLYJS_MODES"]
