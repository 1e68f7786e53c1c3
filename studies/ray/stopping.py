"""A graceful stop across the Ray cluster: the running trials checkpoint where they are, then Tune stops.

Slurm's warning before a time limit (or a preemption's SIGTERM) reaches the driver only. The driver
raises a flag in Ray's key-value store, which every node reads: each running trial sees it at the end
of its next log window, checkpoints there (``xtra.pretrain.Preempted``), commits the checkpoint to the
study's storage and ends its attempt as "preempted"; a trial that starts after the flag ends at once.
``GracefulStop`` (a Tune callback, so it acts on the driver's main thread between Tune's steps) raises
the flag, then ends the Tune run once every trial that was running has stopped, or after ``grace_s``,
whichever comes first. The study's next run (a requeued job) continues each trial from that checkpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ray import tune

PREEMPTED = "preempted"  # a trial's attempt that checkpointed and ended on the flag (not a result)
NAMESPACE = "xtra"
GRACE_S = 60.0  # how long running trials get to reach a log window's end and checkpoint
GRACE_ENV = "XTRA_STOP_GRACE_S"  # the Slurm job script sets it from its --signal lead
ASK_EVERY_S = 1.0  # a trial asks the flag at most this often


def run_id(study_dir: str | os.PathLike, experiment: str) -> str:
    """One run of one study: experiment names (run-<n>) repeat across studies sharing a Ray cluster."""
    return f"{os.fspath(study_dir)}#{experiment}"


def _key(experiment: str) -> bytes:
    return f"stop/{experiment}".encode()


def request_stop(experiment: str) -> None:
    """Raise the stop flag of one run (``run_id``; the driver, connected to Ray)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(_key(experiment), b"1", overwrite=True, namespace=NAMESPACE)


def clear_stop(experiment: str) -> None:
    """Lower the flag once the run is over (a long-lived cluster keeps its key-value store)."""
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_del(_key(experiment), namespace=NAMESPACE)
    except Exception:  # noqa: BLE001 - Ray already gone: nothing kept
        pass


def stop_checker(experiment: str | None) -> Callable[[], bool] | None:
    """``should_stop`` for a trial of run ``experiment`` (``run_id``; inside a Ray worker); None outside Ray."""
    from ray.experimental import internal_kv

    if not experiment or not internal_kv._internal_kv_initialized():
        return None
    key = _key(experiment)
    seen = {"stop": False, "asked": float("-inf")}

    def should_stop() -> bool:
        # asked at every log window: at most one round trip to the GCS a second per trial, and a stop stays one
        now = time.monotonic()
        if not seen["stop"] and now - seen["asked"] >= ASK_EVERY_S:
            seen["asked"] = now
            try:
                seen["stop"] = bool(internal_kv._internal_kv_exists(key, namespace=NAMESPACE))
            except Exception:  # noqa: BLE001 - the GCS unreachable: carry on; the driver's grace deadline bounds it
                pass
        return seen["stop"]

    return should_stop


def grace_s() -> float:
    try:
        return max(0.0, float(os.environ.get(GRACE_ENV, GRACE_S)))
    except ValueError:
        return GRACE_S


class GracefulStop(tune.Callback):
    """Between Tune's steps: once ``stop.signal`` is set, raise the flag, wait for the trials that were
    running to stop (or ``grace_s``), then call ``stop.interrupt_tune()`` (Tune's own Ctrl-C)."""

    def __init__(self, stop: Any, experiment: str, grace: float | None = None) -> None:
        self.stop, self.experiment = stop, experiment
        self.grace = grace_s() if grace is None else grace
        self.asked_at: float | None = None
        self.running: set[str] = set()
        self.done = False

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with its experiment state
        return {"experiment": self.experiment}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.experiment, self.stop, self.grace = state["experiment"], None, GRACE_S
        self.asked_at, self.running, self.done = None, set(), True

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.done or self.stop is None or not self.stop.signal:
            return
        if self.asked_at is None:
            self.asked_at = time.monotonic()
            self.running = {t.trial_id for t in trials if t.status == "RUNNING"}
            try:
                request_stop(self.experiment)
            except Exception as err:  # noqa: BLE001 - no flag: stop the way Ctrl-C does
                self.done = True
                self.stop.note = (f"the stop flag could not be raised ({type(err).__name__}): running trials "
                                  f"continue from their last checkpoint")
                self.stop.interrupt_tune()
                return
        left = self._left(trials)
        if not left or time.monotonic() - self.asked_at > self.grace:
            self._conclude(left)
            self.stop.interrupt_tune()

    def on_experiment_end(self, trials: list, **info: Any) -> None:  # the stopped trials were the last ones
        if not self.done and self.stop is not None and self.asked_at is not None:
            self._conclude(self._left(trials))

    def _left(self, trials: list) -> list:
        return [t for t in trials if t.trial_id in self.running and t.status == "RUNNING"]

    def _conclude(self, left: list) -> None:
        self.done = True
        n = len(self.running)
        self.stop.note = (f"{n - len(left)} of {n} running trial(s) checkpointed where they were"
                          + (f"; {len(left)} did not within {self.grace:g} s and continue from their last "
                             f"checkpoint" if left else ""))
