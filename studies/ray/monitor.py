"""What the person at the terminal sees: a live table (or one line per status change when not a
terminal), fed by a Tune callback that also records the terminal states only the driver knows."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune

from xtra import trialdir as td
from xtra.studies.ray.stopping import PREEMPTED
from xtra.studies.ray.trialfiles import RESERVED, TrialSync, trial_of
from xtra.studies.ray.workers import MAX_FAILURES
from xtra.studies.spec import Study


def trial_name(trial: Any) -> str:
    t = trial.config.get("trial", {})
    return str(t.get("trial_id") or f"trial-{trial.trial_id}")


@dataclass
class _Row:
    key: str
    trial_id: str
    params: str
    total: int
    status: str = "pending"
    samples: int = 0
    loss: float | None = None
    images_per_s: float | None = None
    error: str | None = None
    result: str = ""
    started: float | None = None


@dataclass
class Display:
    """A rich Live table on a terminal; one plain line per status change otherwise (logs, CI)."""

    console: Any
    live: bool
    rows: dict[str, _Row] = field(default_factory=dict)
    title: str = ""
    t0: float = field(default_factory=time.monotonic)
    _live: Any = None

    def add(self, key: str, trial_id: str, params: dict[str, Any], total: int, status: str = "pending") -> None:
        shown = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in params.items()) or "-"
        self.rows.setdefault(key, _Row(key, trial_id, shown, total, status))

    def update(self, key: str, **fields: Any) -> None:
        row = self.rows.get(key)
        if row is None:
            return
        old = row.status
        for k, v in fields.items():
            setattr(row, k, v)
        if row.status == "running" and row.started is None:
            row.started = time.monotonic()
        if not self.live and row.status != old:
            extra = f" ({row.error})" if row.error and row.status in ("failed", "retrying") else ""
            extra += f" {row.result}" if row.result and row.status == "finished" else ""
            self.console.print(f"[{time.monotonic() - self.t0:7.1f}s] {row.trial_id}: {row.status}{extra}",
                               highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def _eta(self, row: _Row) -> str:
        if row.status in ("finished", "failed", "stopped"):
            return ""
        if row.status == "probing":
            return "probing"
        if not row.images_per_s or row.samples >= row.total:
            return "-"
        s = (row.total - row.samples) / row.images_per_s
        return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"

    def render(self) -> Any:
        from rich.table import Table

        counts: dict[str, int] = {}
        for r in self.rows.values():
            counts[r.status] = counts.get(r.status, 0) + 1
        caption = " · ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        table = Table(title=self.title, caption=f"{caption} · {time.monotonic() - self.t0:.0f}s", expand=False)
        for col in ("trial", "params", "status", "samples seen", "loss", "ETA / result"):
            table.add_column(col, overflow="fold")
        style = {"finished": "green", "failed": "red", "retrying": "yellow", "running": "cyan", "probing": "cyan",
                 "stopped": "magenta", PREEMPTED: "yellow"}
        for r in self.rows.values():
            status = f"[{style.get(r.status, '')}]{r.status}[/]" if r.status in style else r.status
            if r.error and r.status in ("failed", "retrying"):
                status += f" [dim]{r.error[:60]}[/]"
            loss = "" if r.loss is None else f"{r.loss:.4f}"
            tail = r.result if r.status == "finished" else self._eta(r)
            table.add_row(r.key[:12], r.params, status, f"{r.samples:,}/{r.total:,}", loss, tail)
        return table

    def __enter__(self) -> Display:
        if self.live:
            from rich.live import Live

            self._live = Live(get_renderable=self.render, console=self.console, refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None


class Monitor(tune.Callback):
    """Feeds the display and records terminal trial states (through xtra.trialdir) that only the driver
    sees: a trial that exhausted its retries, one stopped by ASHA, a result row from another node."""

    def __init__(self, display: Display, study: Study, study_dir: Path) -> None:
        self.display, self.study, self.study_dir = display, study, study_dir
        self.keys: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the run config with the experiment state; the live display stays behind (a
        # restored experiment gets a fresh Monitor attached by _fit), so an unpickled one is inert.
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.display = None
        self.keys = {}

    def _sync(self, trial: Any, key: str) -> TrialSync:
        """The trial's directory as the study's storage holds it (see ``TrialSync``)."""
        return TrialSync(trial.config["trial"].get("storage") or self.study_dir, key)

    def _record(self, trial: Any, key: str, event: str, error: str, **fields: Any) -> None:
        """A terminal state only the driver sees: in the trial's directory (local storage), or as
        its plain status.json in remote storage (the trial's own attempts.jsonl stays its own)."""
        sync = self._sync(trial, key)
        if sync.remote:
            sync.storage.write_json(f"{sync.rel}/{td.STATUS}", {"status": event, "error": error})
            self._refresh(sync, key)
        else:
            td.record_attempt(sync.run_dir, event, error=error, **fields)

    def _refresh(self, sync: TrialSync, key: str) -> None:
        """Bring a remote trial's directory into the driver's copy of the study (no checkpoints)."""
        if not sync.remote:
            return
        with contextlib.suppress(Exception):  # the runner pulls the whole study at the end anyway
            sync.storage.download_dir(sync.rel, td.path(self.study_dir, key), include=lambda n: not td.is_checkpoint(n))

    def _key(self, trial: Any) -> tuple[str, None]:
        key = self.keys.get(trial.trial_id)
        if key is None:
            cfg, trial_id, params, _ = trial_of(trial.config)
            key = self.keys[trial.trial_id] = trial.config["trial"].get("hash") or cfg.config_hash()
            if key not in self.display.rows:
                self.display.add(key, trial_id or trial_name(trial), params, cfg.pretrain.samples)
        return key, None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.display is None:
            return
        key, _ = self._key(trial)
        self.display.update(key, status="running", error=None)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if self.display is None:
            return
        key, _ = self._key(trial)
        fields: dict[str, Any] = {"status": result.get("status", "running"),
                                  "samples": int(result.get("samples_seen") or 0)}
        if result.get("loss") is not None:
            fields["loss"] = float(result["loss"])
        if result.get("images_per_s"):
            fields["images_per_s"] = float(result["images_per_s"])
        if result.get("kind") == "result":
            if result.get("status") == "finished":
                lin, att = result.get("linear_top1"), result.get("attentive_top1")
                fields["result"] = " ".join(f"{n} {v:.3f}" for n, v in (("linear", lin), ("attentive", att))
                                            if isinstance(v, (int, float)))
                sync = self._sync(trial, key)
                if sync.remote:  # the trial committed its trial.json before this report
                    self._refresh(sync, key)
                elif td.read_result(sync.run_dir) is None:  # a worker on another machine: keep the row
                    td.write_result(sync.run_dir,
                                    {k: v for k, v in result.items() if k not in RESERVED and k != "kind"})
            else:
                fields["error"] = result.get("error")
        self.display.update(key, **fields)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.display is None:
            return
        key, _ = self._key(trial)
        self.display.update(key, status="retrying", error=last_error(self.study_dir, key, trial,
                                                                     self._sync(trial, key)))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.display is None:
            return
        key, _ = self._key(trial)
        err = last_error(self.study_dir, key, trial, self._sync(trial, key))
        self._record(trial, key, "failed", err, after_attempts=MAX_FAILURES + 1)
        self.display.update(key, status="failed", error=err)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.display is None:
            return
        key, _ = self._key(trial)
        last = trial.last_result or {}
        if last.get("kind") != "result":  # stopped early by the scheduler (ASHA)
            self._record(trial, key, "stopped", f"stopped early by ASHA at {last.get('samples_seen', 0)} samples")
            self.display.update(key, status="stopped")
        elif last.get("status") in ("finished", PREEMPTED):
            self.display.update(key, status=last["status"])
        else:
            self.display.update(key, status="failed", error=last.get("error"))


def last_error(study_dir: Path, key: str, trial: Any, sync: TrialSync | None = None) -> str:
    attempts = td.read_jsonl((sync.run_dir if sync is not None and not sync.remote else td.path(study_dir, key))
                             / td.ATTEMPTS)
    if sync is not None and sync.remote:
        with contextlib.suppress(Exception):
            text = sync.storage.read_bytes(f"{sync.rel}/{td.ATTEMPTS}").decode(errors="replace")
            attempts = [json.loads(ln) for ln in text.splitlines() if ln.strip().startswith("{")]
    for a in reversed(attempts):
        if a.get("event") == "error":
            return str(a.get("error"))
    text = ""
    with contextlib.suppress(Exception):
        text = str(trial.get_error() or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error (see ray.log)"


