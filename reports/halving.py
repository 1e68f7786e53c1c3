"""A halving search's rung ladder in the report: configurations by rung, the metric of each completed
budget (a wsd cooldown branch), and who went on. Read from the study directory's ladder
(``xtra.studydir.read_ladder``), which ``xtra.studies.halving`` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from xtra import studydir as st

from .figures import PALETTE
from .panel import Panel, layout
from .tables import Table


def _label(config: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                     for k, v in config.items())


def ladder_panels(study_dir: str | Path) -> list[Panel]:
    """One panel (figure and table) for a study with a rung ladder; none otherwise."""
    ladder = st.read_ladder(Path(study_dir))
    if ladder is None or not ladder.get("configs"):
        return []
    search = ladder.get("search", {})
    metric, budgets = search.get("metric", "metric"), search.get("rungs", [])
    configs = ladder["configs"]
    scale = 100.0 if metric.endswith("top1") else 1.0
    fig = go.Figure()
    rows: list[list[str]] = []
    last = len(budgets) - 1
    for i, config in enumerate(configs):
        xs, ys, symbols, texts = [], [], [], []
        for r, rung in enumerate(ladder["rungs"]):
            entry = next((e for e in rung["entries"] if e["config"] == i), None)
            if entry is None:
                continue
            went_on = i in rung["promoted"]
            verdict = ("best" if r == last else "promoted") if went_on else "stopped"
            value = entry.get("value")
            rows.append([f"c{i}", _label(config), f"{rung['samples']:,}",
                         "–" if value is None else f"{value * scale:.2f}", entry.get("status", ""), verdict])
            if value is None:
                continue
            xs.append(rung["samples"])
            ys.append(value * scale)
            symbols.append("star" if went_on and r == last else "circle" if went_on else "x")
            texts.append(f"c{i} {_label(config)}<br>{rung['samples']:,} samples: {value * scale:.2f} ({verdict})")
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"c{i} {_label(config)}",
                                     marker=dict(symbol=symbols, size=11, color=PALETTE[i % len(PALETTE)]),
                                     line=dict(color=PALETTE[i % len(PALETTE)]), hovertext=texts, hoverinfo="text"))
    unit = " (%)" if scale == 100.0 else ""
    layout(fig, "Successive halving: each configuration's completed budgets (wsd cooldown branches)",
           "samples (rung budget)", f"{metric}{unit}", logx=True)
    decided = len(ladder["rungs"])
    note = (f"{len(configs)} configurations; rungs at {', '.join(f'{b:,}' for b in budgets)} samples; "
            f"{decided} of {len(budgets)} rungs decided. Each point is a model trained to that budget with its "
            f"cooldown completed; circle = promoted to the next rung, x = stopped, star = the search's best.")
    table = Table("Rung ladder", ["config", "params", "rung (samples)", metric, "status", "verdict"], rows,
                  id="table-halving")
    return [Panel("halving-ladder", "Halving search: the rung ladder", fig, note=note, tables=[table])]
