"""The two-variable law L(N, D) in the report: its fits per configuration, the compute figure, iso-FLOP
curves and the compute-optimal frontier (drawn only from an identified law)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from .collect import StudyResults
from .law_panels import (
    comparison_table,
    draw_held,
    fmt_ci,
    held_cells,
    held_out_table,
    law_note,
    law_table,
    param_cell,
    points_and_law,
    verdict,
    verdicts,
    why_no_law,
)
from .panel import PALETTE, Panel, colors, data_range, group_keys, groups, layout, loss_column, param_axis, positive
from .scaling import AffineCompute, ChinchillaFit, LawAnalysis, analyze_chinchilla
from .tables import SAMPLE_KEYS, SIZE_KEYS, Table, human, label

MIN_CHINCHILLA_PAIRS = 6  # distinct (N, D) pairs before the 5-parameter surface is fitted

ChinchillaResult = Mapping[str, tuple[LawAnalysis, pl.DataFrame]]


def chinchilla_fits(study: StudyResults, n_boot: int = 200) -> tuple[dict[str, tuple[LawAnalysis, pl.DataFrame]], str]:
    """One L(N, D) analysis per group of the keys that are neither size nor samples, where N and D both vary."""
    lcol, _ = loss_column(study)
    ncol, _ = param_axis(study)
    fin = positive(study.finished, ncol, "samples_seen", lcol, "flops_per_image")
    out: dict[str, tuple[LawAnalysis, pl.DataFrame]] = {}
    why = []
    for lab, part in groups(fin, group_keys(study, (*SIZE_KEYS, *SAMPLE_KEYS))):
        n_n, n_d = part.get_column(ncol).n_unique(), part.get_column("samples_seen").n_unique()
        pairs = part.select(ncol, "samples_seen").unique().height
        if n_n < 2 or n_d < 2 or pairs < MIN_CHINCHILLA_PAIRS:
            why.append(f"{lab}: {n_n} parameter counts, {n_d} sample budgets, {pairs} distinct pairs "
                       f"(needs >= 2, >= 2, >= {MIN_CHINCHILLA_PAIRS})")
            continue
        # each trial's own FLOPs per image, affine in N (xtra.costs: the predictor and head do not scale)
        compute = AffineCompute.from_trials(part[ncol].to_numpy(), part["flops_per_image"].to_numpy())
        c_max = float((part["flops_per_image"] * part["samples_seen"]).max())
        try:
            out[lab] = (analyze_chinchilla(part[ncol].to_numpy(), part["samples_seen"].to_numpy(),
                                           part[lcol].to_numpy(), n_boot=n_boot, compute=compute,
                                           reference_compute=c_max), part)
        except ValueError as exc:
            why.append(f"{lab}: {exc}")
    return out, "; ".join(why)


def chinchilla_table(fits: ChinchillaResult, ltitle: str, nname: str = "parameters") -> Table:
    rows = []
    flops = []
    for lab, (a, _) in fits.items():
        f = a.law
        shown = f or a.chosen
        d = shown.diagnostics if shown is not None else None
        (ea, eb), eci = (f.exponents, f.exponents_ci) if isinstance(f, ChinchillaFit) else ((math.nan,) * 2, None)
        rows.append([lab, verdict(a), shown.form.name if shown else "–", str(shown.n_points) if shown else "–"]
                    + [param_cell(f, p) for p in ("E", "A", "B", "C", "alpha", "beta")]
                    + [fmt_ci(ea, eci["a"]) if eci else "–", fmt_ci(eb, eci["b"]) if eci else "–",
                       f"{d.rmse_log:.3g}" if d else "–", f"{d.points_per_param:.1f}" if d else "–",
                       *held_cells(a), why_no_law(a)])
        if isinstance(shown, ChinchillaFit) and shown.compute is not None:
            flops.append(f"{lab}: {shown.compute.describe()}, C_max = {shown.reference_compute:.3g}")
    return Table(title=f"Law: {ltitle} = E + A/N^alpha + B/D^beta (or the reduced form chosen)",
                 columns=["group", "verdict", "form", "points", "E", "A", "B", "C", "alpha", "beta",
                          "a = dlog N_opt/dlog C", "b = dlog D_opt/dlog C", "RMSE log L", "points/param",
                          "held-out error", "held-out in 95% PI", "why"], rows=rows,
                 note=f"N = {nname}, D = samples seen; [95% interval of the linearised least-squares "
                      "fit, t with runs - parameters df; measured coverage: "
                      "docs/reports.md#calibrated-intervals]; C is the "
                      "coefficient of the log-linear form L = C·N^-alpha·D^-beta. Compute-optimal allocation under "
                      "training FLOPs C = D·(fixed + per_param·N), fitted to the trials' own FLOPs per image "
                      f"({'; '.join(flops) or 'no fit'}), solved numerically; a and b are local exponents at C_max "
                      "(with a fixed part they change with C). It exists only for a law with both power terms (full "
                      "or E = 0). Held out: the largest sample budget, refitted without it; PI = 95% prediction "
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
            bits.append(f"{lab}: {why_no_law(a)}")
        elif not (isinstance(a.law, ChinchillaFit) and a.law.has_frontier):
            bits.append(f"{lab}: the law chosen ({a.law.form.name}) has no power term in both N and D, so no "
                        "compute-optimal trade-off")
    return "; ".join(bits + ([why] if why else []))


def compute_figure(study: StudyResults, chinchilla: ChinchillaResult, n_boot: int = 200) -> Panel:
    pid = "compute"
    lcol, ltitle = loss_column(study)
    ncol, nname = param_axis(study)
    title = f"Compute: {ltitle} vs training FLOPs"
    fin = positive(study.finished, "flops_per_image", "samples_seen", lcol)
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
            hover = [f"{lab}<br>N={human(n)} D={human(d)}" for n, d in zip(part[ncol], part["samples_seen"])]
            fig.add_trace(go.Scatter(x=xs[~held], y=ys[~held], mode="markers", name=lab, legendgroup=lab,
                                     text=[h for h, k in zip(hover, held) if not k],
                                     hovertemplate="%{text}<br>C=%{x:.3s} FLOPs<br>loss %{y:.4g}<extra></extra>",
                                     marker=dict(color=color, size=7, opacity=0.8)))
            if a.held is not None:
                h = a.held
                c_held = (part.filter(pl.col("samples_seen") == d_max)
                          .select(ncol, "flops_per_image"))
                fpi = dict(zip(c_held[ncol].to_list(), c_held["flops_per_image"].to_list()))
                x_held = np.array([fpi.get(n, np.nan) * d for n, d in h.X])
                draw_held(fig, h, x_held, lab, color)
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
        both = part[ncol].n_unique() > 1 and part["samples_seen"].n_unique() > 1
        if both:  # N and D both vary but too few pairs for L(N, D): a law in C alone would mix them
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=lab, legendgroup=lab,
                                     marker=dict(color=color, size=7, opacity=0.8)))
            continue
        points_and_law(fig, xs, ys, lab, color, n_boot, analyses, skipped, dict(size=7, opacity=0.8),
                        "{lab} law: {fit}")
    layout(fig, title, "training FLOPs (flops_per_image × samples seen)", ltitle, logx=True, logy=True)
    fig.update_yaxes(range=data_range(fin[lcol].to_numpy()))
    tables = []
    if analyses:
        t = law_table(f"Law: {ltitle} vs training FLOPs", analyses, "C", "table-fit-compute")
        t.note = t.note.replace("{what}", "the largest compute per group")
        tables.append(t)
    note = law_note(analyses, skipped) if analyses or skipped else ""
    if chinchilla:
        note += (" Dotted: the compute-optimal frontier of an L(N, D) law (drawn only where one was identified); "
                 "open diamonds: runs of the largest budget, held out; crosses: their predictions from the law "
                 "refitted without them, with 95% prediction intervals.")
    if notes:
        note += " " + "; ".join(notes) + "."
    return Panel(pid, title, fig, note=note.strip(), tables=tables,
                 laws=verdicts(f"{ltitle} vs training FLOPs", analyses, skipped))


def _default_group(study: StudyResults, fits: Mapping[str, Any]) -> str:
    keys = group_keys(study, (*SIZE_KEYS, *SAMPLE_KEYS))
    want = label(keys, [study.default(k) for k in keys])
    return want if want in fits else next(iter(fits))


def isoflop_figure(study: StudyResults, chinchilla: ChinchillaResult, why: str) -> Panel:
    """Iso-FLOP curves of the L(N, D) law: solid within the trials' N range, dashed beyond."""
    pid, title = "isoflop", "Iso-FLOP curves of the L(N, D) law"
    _, ltitle = loss_column(study)
    tables = []
    if chinchilla:
        tables = [chinchilla_table(chinchilla, ltitle, param_axis(study)[1]),
                  comparison_table("Model comparison: L(N, D)", {k: a for k, (a, _) in chinchilla.items()},
                                   "table-compare-chinchilla"),
                  held_out_table("Held-out prediction: L(N, D)", {k: a for k, (a, _) in chinchilla.items()},
                                 ["N", "D"], "table-heldout-chinchilla")]
        tables = [t for t in tables if t.rows]  # no held-out table without a law to check
    laws = [(v, f"L(N, D): {s}") for v, s in verdicts(ltitle, {k: a for k, (a, _) in chinchilla.items()})]
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
    ncol, nname = param_axis(study)
    budgets = (part["flops_per_image"] * part["samples_seen"]).to_numpy()
    n_lo, n_hi = part[ncol].min(), part[ncol].max()
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
        x=part[ncol].to_numpy(), y=part[lcol].to_numpy(), mode="markers", name="trials",
        marker=dict(color=np.log10(budgets), colorscale="Viridis", size=7, line=dict(width=0.5, color="white"),
                    colorbar=dict(title="log10 C", x=1.02, len=0.6))))
    layout(fig, title, f"N: {nname}", ltitle, logx=True, logy=True)
    fig.update_layout(legend=dict(x=1.12))
    fig.update_xaxes(range=data_range([n_lo / 10, n_hi * 10]))
    fig.update_yaxes(range=data_range(part[lcol].to_list() + inside))
    note = (f"Group {lab} ({fit.form.name} law). Solid: the iso-FLOP curve within the trials' parameter range; "
            "dashed: extrapolated. Stars: N_opt(C), which may lie outside the range run. Dots: trials coloured by "
            "their FLOPs.")
    return Panel(pid, title, fig, note=note, tables=tables, laws=laws)


def frontier_figure(study: StudyResults, chinchilla: ChinchillaResult) -> Panel:
    pid, title = "frontier", "Compute-optimal frontier"
    usable = _laws_with_frontier(chinchilla)
    if not usable:
        return Panel(pid, title, note="Skipped: no L(N, D) law with a compute-optimal trade-off (see the iso-FLOP "
                                      "section for why).")
    ncol, nname = param_axis(study)
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"N_opt(C): {nname.split(' (')[0]}", "D_opt(C): samples seen"))
    cmap = colors(list(usable))
    for lab, (fit, part) in usable.items():
        budgets = (part["flops_per_image"] * part["samples_seen"]).to_numpy()
        grid = np.logspace(np.log10(budgets.min()) - 0.5, np.log10(budgets.max()) + 0.5, 60)
        within = (grid >= budgets.min()) & (grid <= budgets.max())
        n_opt, d_opt = fit.compute_optimal(grid)
        a, b = fit.exponents
        for col, (yopt, ycol, expo) in enumerate(((n_opt, ncol, a), (d_opt, "samples_seen", b)), start=1):
            fig.add_trace(go.Scatter(x=grid, y=yopt, mode="lines", legendgroup=lab, showlegend=False,
                                     line=dict(color=cmap[lab], dash="dash", width=1), hoverinfo="skip"),
                          row=1, col=col)
            fig.add_trace(go.Scatter(x=grid[within], y=yopt[within], mode="lines", name=f"{lab}: ∝ C^{expo:.2f}",
                                     legendgroup=lab, line=dict(color=cmap[lab]), showlegend=col == 1), row=1, col=col)
            fig.add_trace(go.Scatter(x=budgets, y=part[ycol].to_numpy(), mode="markers", name=f"{lab}: trials",
                                     legendgroup=lab, marker=dict(color=cmap[lab], size=6, opacity=0.6),
                                     showlegend=col == 1), row=1, col=col)
    layout(fig, title, "training FLOPs C", "", logx=True, logy=True)
    fig.update_yaxes(title_text="N_opt", row=1, col=1)
    fig.update_yaxes(title_text="D_opt", row=1, col=2)
    bands = [allocation_sentence(lab, fit) for lab, (fit, _) in usable.items()]
    return Panel(pid, title, fig, note="Lines: compute-optimal allocation of the L(N, D) law under the trials' own "
                                       "(affine) FLOPs per image, solved numerically, solid over the budgets run, "
                                       "dashed beyond; dots: the trials run. " + " ".join(b for b in bands if b))


def allocation_sentence(lab: str, fit: ChinchillaFit) -> str:
    """'At C = 3.1e15 FLOPs (the largest run): N_opt 2.1M [1.2M, 4.0M], D_opt ..., D/N ..., a ...': the
    compute-optimal allocation with 95% bands over the law's t-calibrated parameter draws, and where its coverage is."""
    if fit.compute is None or not fit.reference_compute or len(fit.draws) < 2:
        return ""
    band = fit.allocation(fit.reference_compute)

    def cell(name: str, fmt: str) -> str:
        v, lo, hi = band[name]
        return f"{name} {v:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if math.isfinite(lo) else f"{name} {v:{fmt}}"

    return (f"{lab}: at C = {fit.reference_compute:.3g} FLOPs (the largest run) " + ", ".join(
        (cell("N_opt", ".3g"), cell("D_opt", ".3g"), cell("D/N", ".3g"), cell("a", ".2f"), cell("b", ".2f")))
        + " (95% bands over the law's t-calibrated draws; coverage: docs/reports.md#calibrated-intervals).")


