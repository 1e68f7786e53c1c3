"""The result schema of a study, and the one function from a trial's state to its row.

results.parquet, curves.parquet and probes.parquet (written by ``xtra.studydir``) and the rows a report
rebuilds from the trial directories mid-run (``xtra.reports.collect``) have their columns and types
from here, so the writer and the reader cannot drift apart: a new column is one line below.

Types are polars type names (polars is imported only where a frame is built).
"""

from __future__ import annotations

from typing import Any

from xtra.costs import size_columns
from xtra.trialdir import FINISHED, TrialState, clean

# results.parquet: one row per trial. Identity and status first, then (the study's swept keys, typed by
# their values) the sizes and metrics, then the run's bookkeeping.
CONTRACT = {"study": "String", "trial_id": "String", "config_hash": "String", "status": "String",
            "error": "String", "seed": "Int64"}
METRICS = {"block_size": "Int64", "width": "Int64", "depth": "Int64", "n_params": "Int64",
           "n_params_encoder": "Int64", "flops_per_image": "Int64", "samples_seen": "Int64",
           "train_loss": "Float64", "val_loss": "Float64", "linear_top1": "Float64", "attentive_top1": "Float64",
           "linear_best_lr": "Float64", "attentive_best_lr": "Float64", "wall_s": "Float64"}
EXTRAS = {"preset": "String", "images_per_s": "Float64", "attempts": "Int64", "probe_hash": "String"}
# A wsd branch's columns: present only when some trial of the study is one.
BRANCH = {"trunk": "String", "branch_start": "Int64", "samples_trained": "Int64"}
RESULT_SCHEMA = {**CONTRACT, **METRICS, **EXTRAS, **BRANCH}

# curves.parquet: one row per trial and logged step (metrics.jsonl, read by xtra.trialdir.curve_rows).
CURVE_SCHEMA = {"study": "String", "trial_id": "String", "config_hash": "String", "step": "Int64",
                "samples_seen": "Int64", "loss": "Float64", "lr": "Float64", "wall_s": "Float64"}

# probes.parquet: one row per trial x checkpoint (samples seen) x probe dataset x kind.
PROBE_SCHEMA = {"study": "String", "trial_id": "String", "config_hash": "String", "probe_hash": "String",
                "seed": "Int64", "samples": "Int64", "dataset": "String", "kind": "String", "top1": "Float64",
                "best_lr": "Float64", "best_val_top1": "Float64", "still_improving": "Boolean"}


def polars_types(schema: dict[str, str]) -> dict[str, Any]:
    """A schema above with polars types."""
    import polars as pl

    return {column: getattr(pl, name) for column, name in schema.items()}


def static_row(cfg: Any) -> dict[str, Any]:
    """The part of a trial's row knowable before any compute (``cfg``: its TrialConfig)."""
    return {"config_hash": cfg.config_hash(), "probe_hash": cfg.probe_hash(), "seed": cfg.seed,
            **size_columns(cfg.model)}


def result_row(state: TrialState, study: str | None, swept: list[str] | None, preset: str | None = None
               ) -> dict[str, Any]:
    """THE row of one trial: identity, status (``xtra.trialdir``'s, the one definition), the swept values
    (``swept``; None: every param the trial was started with), sizes and metrics (the finished trial's
    own, else its config's sizes and the last logged step), and the run's bookkeeping."""
    src = state.row or {}
    row: dict[str, Any] = {"study": study, "trial_id": state.trial_id, "config_hash": state.config_hash,
                           "status": state.status, "error": state.error if state.status != FINISHED else None,
                           "seed": state.seed}
    for key in state.params if swept is None else swept:
        row[key] = clean(state.params.get(key))
    static = size_columns(state.config.model) if state.config is not None else {}
    for col in METRICS:
        value = src.get(col, static.get(col))
        if value is None and col == "samples_seen":
            value = state.samples_seen
        if value is None and col == "train_loss" and state.last:
            value = state.last.get("loss")
        row[col] = clean(value)
    row["preset"] = preset
    for col in ("images_per_s", "probe_hash", *BRANCH):
        if col in src or (state.extra and col in state.extra):
            row[col] = clean(src.get(col, (state.extra or {}).get(col)))
    row["attempts"] = state.starts
    return row
