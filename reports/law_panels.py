"""Scaling-law panels in one variable: a loss vs samples or parameters per configuration, and each
trial's learning curve, with the law tables (parameters, model comparison, held-out check) and the
sentences that say which law was found or why there is none. Every fit goes through
``reports.scaling``'s model comparison and diagnostics: a curve is drawn, and a law stated, only when
the chosen form is identifiable; curves stay within the data's range (extrapolation dashed), and the
y axis is set by the data, never by a band."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import polars as pl

from .collect import StudyResults
from .intervals import EVIDENCE
from .panel import (
    Panel,
    colors,
    data_range,
    draw_band,
    group_keys,
    groups,
    layout,
    loss_column,
    positive,
    varies_within,
)
from .scaling import FormFit, HeldOut, LawAnalysis, analyze_power_law
from .scaling.select import held_out_failure
from .tables import Table, human

MIN_FIT_X = 4  # distinct x values before a power law (3 parameters) is fitted
HELD_MARKER = dict(symbol="diamond-open", size=12, line=dict(width=2))
PRED_MARKER = dict(symbol="x-thin-open", size=11, line=dict(width=2))


def fmt_ci(value: float, ci: tuple[float, float]) -> str:
    if not math.isfinite(value):
        return "–"
    if not all(math.isfinite(v) for v in ci):
        return f"{value:.4g}"
    return f"{value:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]"


def param_cell(fit: FormFit | None, name: str) -> str:
    if fit is None or name not in fit.params:
        return "–"
    return fmt_ci(fit.params[name], fit.ci[name])


def held_cells(a: LawAnalysis) -> list[str]:
    h = a.held
    if h is None:
        return ["–", a.held_note or "–"]
    inside = f"{int(h.inside.sum())}/{len(h.actual)}" if h.has_interval else "no interval"
    return [f"{h.mean_abs_rel_error:.2%}", inside]


def verdict(a: LawAnalysis, descriptive: bool = False) -> str:
    if a.law is None:
        return "no law"
    return "descriptive fit" if descriptive else "law"


def why_no_law(a: LawAnalysis) -> str:
    if a.fails_held_out:
        return held_out_failure(a)
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
        rows.append([lab, verdict(a, descriptive.get(lab, False)), f.form.name if f is not None else "–",
                     str(f.n_points) if f is not None else "–", param_cell(a.law, "E"),
                     param_cell(a.law, "A") if a.law is None or "A" in a.law.params else param_cell(a.law, "C"),
                     param_cell(a.law, "alpha"), f"{d.rmse_log:.3g}" if d else "–",
                     f"{d.points_per_param:.1f}" if d else "–", *held_cells(a), why_no_law(a)])
    return Table(title=title, columns=["group", "verdict", "form", "points", "E", "A (or C)", "alpha",
                                       "RMSE log L", "points/param", "held-out error", "held-out in 95% PI", "why"],
                 rows=rows, id=tid,
                 note=f"Forms: L = E + A·{xname}^-alpha (full), A·{xname}^-alpha (E = 0, log-linear), a constant "
                      "(no scaling); fitted on log L (Huber, delta 1e-3, L-BFGS-B), [95% interval of the linearised "
                      "least-squares fit, t with runs - parameters df; measured coverage in "
                      "docs/reports.md#calibrated-intervals]. The form is the simplest within one standard "
                      "error of the best cross-validated "
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
    method = next(iter(analyses.values())).comparison.method if analyses else "leave-one-point-out"
    return Table(title=title, columns=["group", "form", "parameters", "CV RMSE (log L)", "± SE", "", "note"],
                 rows=rows, id=tid,
                 note=f"Cross-validated ({method}: the seeds of a point leave together; 5-fold above 20 points) "
                      "error of log L per form. Chosen: the "
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
                                         "them. PI: the least-squares prediction ± t_{n-p}·sqrt(se² + s²) in log L; "
                                         f"its measured coverage per design: {EVIDENCE}.")



def analyze_power(xs: np.ndarray, ys: np.ndarray, n_boot: int, hold_out: str | None = "largest"
                   ) -> tuple[LawAnalysis | None, str]:
    if len(np.unique(xs)) < MIN_FIT_X:
        return None, f"{len(np.unique(xs))} distinct x values (a fit needs {MIN_FIT_X})"
    try:
        return analyze_power_law(xs, ys, n_boot=n_boot, seed=0, hold_out=hold_out,
                                 no_hold_out_reason="cosine schedule: descriptive, not extrapolated"), ""
    except ValueError as exc:
        return None, str(exc)


def draw_law(fig: go.Figure, a: LawAnalysis, grid_x: np.ndarray, predict: Callable[[FormFit, np.ndarray], np.ndarray],
              band: Callable[[FormFit, np.ndarray], tuple[np.ndarray, np.ndarray]], lab: str, color: str,
              name: str) -> None:
    """The law's curve and band over the data's range (solid)."""
    law = a.law
    if law is None:
        return
    draw_band(fig, grid_x, *band(law, grid_x), color=color, group=lab)
    fig.add_trace(go.Scatter(x=grid_x, y=predict(law, grid_x), mode="lines", name=name, legendgroup=lab,
                             line=dict(color=color)))


def draw_held(fig: go.Figure, h: HeldOut, x_held: np.ndarray, lab: str, color: str) -> None:
    """Held-out runs (open diamonds) and their predictions with 95% prediction intervals (crosses)."""
    fig.add_trace(go.Scatter(x=x_held, y=h.actual, mode="markers", name=f"{lab}: held out", legendgroup=lab,
                             marker=dict(color=color, **HELD_MARKER),
                             hovertemplate="held out<br>x %{x:.3s}<br>loss %{y:.4g}<extra></extra>"))
    err = dict(type="data", symmetric=False, array=(h.hi - h.predicted).tolist(),
               arrayminus=(h.predicted - h.lo).tolist(), color=color, thickness=1.5) if h.has_interval else None
    fig.add_trace(go.Scatter(x=x_held, y=h.predicted, mode="markers", name=f"{lab}: predicted (fit without it)",
                             legendgroup=lab, marker=dict(color=color, **PRED_MARKER), error_y=err,
                             hovertemplate="predicted %{y:.4g}<extra></extra>"))


def points_and_law(fig: go.Figure, xs: np.ndarray, ys: np.ndarray, lab: str, color: str, n_boot: int,
                    analyses: dict[str, LawAnalysis], skipped: list[str], marker: dict, fit_name: str,
                    hold_out: str | None = "largest") -> None:
    """A group's points, then (when it is a law) its curve and band, and the held-out check."""
    a, why = analyze_power(xs, ys, n_boot, hold_out)
    held = a.held if a is not None else None
    is_held = np.isin(xs, held.X[:, 0]) if held is not None else np.zeros(len(xs), dtype=bool)
    fig.add_trace(go.Scatter(x=xs[~is_held], y=ys[~is_held], mode="markers", name=lab, legendgroup=lab,
                             marker=dict(color=color, **marker)))
    if a is None:
        skipped.append(f"{lab}: {why}")
        return
    analyses[lab] = a
    if a.law is None:
        skipped.append(f"{lab}: {why_no_law(a)}")
        return
    grid = np.logspace(np.log10(xs.min()), np.log10(xs.max()), 100)
    draw_law(fig, a, grid, lambda f, g: f.predict(g), lambda f, g: f.predict_interval(g), lab, color,
              fit_name.format(lab=lab, fit=a.law.describe()))
    if held is not None:
        x_train_max = held.fit.x_range[0][1]
        ext = np.logspace(np.log10(x_train_max), np.log10(xs.max()), 30)
        fig.add_trace(go.Scatter(x=ext, y=held.fit.predict_matrix(ext[:, None]), mode="lines", showlegend=False,
                                 legendgroup=lab, line=dict(color=color, dash="dash", width=1.5),
                                 hoverinfo="skip"))  # the held-out fit, extrapolated
        draw_held(fig, held, held.X[:, 0], lab, color)


def law_note(analyses: Mapping[str, LawAnalysis], skipped: Sequence[str],
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
        note += ("Solid: the law over the data's range, band: 95% interval of the law's mean; dashed: the fit "
                 "without the held-out runs, extrapolated; open diamonds: held-out runs; crosses: their predictions "
                 "with 95% prediction intervals. ")
    elif n_descriptive:
        note += "Solid: the fit over the data's range, band: 95% interval of its mean. "
    if skipped:
        note += "No law: " + "; ".join(skipped) + "."
    return note.strip()


def loss_scaling(study: StudyResults, x: str, xtitle: str, exclude: Sequence[str], n_boot: int = 200) -> Panel:
    """Final loss vs ``x`` per configuration; a power law per group where the data identify one."""
    pid = "loss-vs-" + ("samples" if x == "samples_seen" else "params")
    lcol, ltitle = loss_column(study)
    axis, xtitle = xtitle, xtitle.split(" (")[0]  # the axis says in full what is counted, titles in short
    title = f"Scaling: {ltitle} vs {xtitle}"
    fin = positive(study.finished, x, lcol)
    parts = groups(fin, group_keys(study, exclude))
    if not varies_within(parts, x):
        return Panel(pid, title, note=f"Skipped: {xtitle} do not vary within any configuration.")
    cmap = colors([lab for lab, _ in parts])
    fig = go.Figure()
    analyses: dict[str, LawAnalysis] = {}
    skipped: list[str] = []
    for lab, part in parts:
        xs, ys = part.get_column(x).to_numpy(), part.get_column(lcol).to_numpy()
        points_and_law(fig, xs, ys, lab, cmap[lab], n_boot, analyses, skipped, dict(size=7, opacity=0.8),
                        "{lab} law: {fit}")
    layout(fig, title, axis, ltitle, logx=True, logy=True)
    fig.update_yaxes(range=data_range(fin.get_column(lcol).to_numpy()))
    tables = [law_table(f"Law: {ltitle} vs {xtitle}", analyses, "x", f"table-fit-{pid}")] if analyses else []
    for t in tables:
        t.note = t.note.replace("{what}", f"the largest {xtitle} per group")
    counted = f"x = {axis}. " if x != "samples_seen" else ""
    return Panel(pid, title, fig, note=counted + law_note(analyses, skipped), tables=tables,
                 laws=verdicts(f"{ltitle} vs {xtitle}", analyses, skipped))


def verdicts(what: str, analyses: Mapping[str, LawAnalysis], skipped: Sequence[str] = (),
              descriptive: Mapping[str, bool] | None = None) -> list[tuple[str, str]]:
    """(verdict, sentence) per group for the report's list of laws."""
    out = []
    for lab, a in analyses.items():
        if a.law is not None:
            kind = "descriptive fit" if (descriptive or {}).get(lab) else "law"
            held = ""
            if a.held is not None:
                held = (f"; held-out error {a.held.mean_abs_rel_error:.2%}, "
                        f"{int(a.held.inside.sum())}/{len(a.held.actual)} inside the 95% PI (coverage: "
                        f"{EVIDENCE})" if a.held.has_interval else
                        f"; held-out error {a.held.mean_abs_rel_error:.2%}"
                        + (f" ({a.held.note})" if a.held.note else ""))
            out.append((kind, f"{what}, {lab}: {kind} ({a.law.form.name}): {a.law.describe()}{held}"))
        else:
            out.append(("no law", f"{what}, {lab}: {why_no_law(a)}"))
    return out


def _schedules(study: StudyResults) -> dict[str, str]:
    """LR schedule per config_hash: the ``pretrain.schedule`` column, else the study's default, else cosine
    (the only schedule before the key existed)."""
    res = study.results
    default = study.default("pretrain.schedule") or "cosine"
    if "pretrain.schedule" in res.columns:
        return {h: (s or default) for h, s in zip(res["config_hash"].to_list(), res["pretrain.schedule"].to_list())}
    return {h: default for h in res["config_hash"].to_list()}


def stable_phase(curve: pl.DataFrame, tol: float = 1e-3) -> pl.DataFrame | None:
    """The rows of a wsd run's stable phase: the learning rate within `tol` of its peak (past the warmup,
    before the cooldown). None when the curve has no lr column or too few such rows to fit."""
    if "lr" not in curve.columns or curve.get_column("lr").drop_nulls().len() == 0:
        return None
    peak = curve.get_column("lr").max()
    stable = curve.filter(pl.col("lr") >= (1 - tol) * peak)
    return stable if stable.get_column("samples_seen").n_unique() >= MIN_FIT_X else None


def learning_curve_laws(study: StudyResults, n_boot: int = 200, max_trials: int = 12,
                        warmup_fraction: float = 0.1) -> Panel:
    """Each finished trial's own pretraining curve, L(s) = E + A·s^-alpha, fitted past the warmup.

    Every study has these curves, even one with a single budget: they say how far each configuration's
    loss was still falling when training stopped. Under a cosine schedule the LR decay shapes the tail,
    so a fit is descriptive only (no held-out extrapolation); under a constant-LR phase (wsd) the last
    20% of the curve is held out and predicted."""
    pid, title = "learning-curve-laws", "Learning-curve laws: pretraining loss vs samples seen (fitted)"
    finished = study.finished.select("config_hash", "trial_id").unique("config_hash", keep="first")
    cur = positive(study.curves, "samples_seen", "loss").join(finished, on="config_hash", how="inner")
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
        stable = None if cosine else stable_phase(part)
        if stable is not None:  # wsd: one phase only; the cooldown is another law's business
            part = stable
        else:
            part = part.filter(pl.col("samples_seen") >= warmup_fraction * s_max)
        xs, ys = part.get_column("samples_seen").to_numpy(), part.get_column("loss").to_numpy()
        shown += ys.tolist()
        points_and_law(fig, xs, ys, lab, cmap[lab], n_boot, analyses, skipped, dict(size=4, opacity=0.6),
                        "{lab} fit", hold_out=None if cosine else "tail")
    layout(fig, title, "samples seen", "pretraining loss", logx=True, logy=True)
    fig.update_yaxes(range=data_range(shown))
    n_cos = sum(descriptive.values())
    note = (f"Per cosine trial, curve rows past the first {warmup_fraction:.0%} of the budget; per wsd trial, the "
            "rows of its stable phase only (the learning rate at its peak: past the warmup, before the cooldown), "
            "whose last 20% are held out, so the check tests the law within one phase and not the schedule. Points "
            "of one run are autocorrelated: these intervals are descriptive, not calibrated. ")
    if n_cos:
        note += (f"{n_cos} trial(s) ran a cosine schedule: its decay shapes the tail, so their fits are descriptive "
                 "learning curves, not laws to extrapolate (no held-out check). ")
    note += law_note(analyses, skipped, descriptive)
    if not analyses:
        return Panel(pid, title, note="No learning-curve fit: " + "; ".join(skipped))
    table = law_table("Fit: pretraining loss vs samples seen, per trial", analyses, "s", f"table-fit-{pid}",
                      descriptive=descriptive)
    table.note = table.note.replace("{what}", "the last 20% of the stable phase (wsd only)")
    return Panel(pid, title, fig, note=note.strip(), tables=[table],
                 laws=verdicts("learning curve", analyses, skipped, descriptive))


