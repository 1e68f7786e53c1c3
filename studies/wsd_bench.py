"""What a budget sweep trains under wsd (one trunk + a cooldown per budget) vs cosine (every
budget from scratch): arithmetic from the expanded study, no training (`xtra bench --sections wsd`)."""

from __future__ import annotations

from typing import Any

from xtra.schedule import samples_trained
from xtra.studies.load import load_study


def _log_spaced(lo: int, hi: int, n: int) -> list[int]:
    return [round(lo * (hi / lo) ** (i / (n - 1))) for i in range(n)]


def bench_wsd_samples() -> list[dict[str, Any]]:
    """Samples trained by `sample-budget` under wsd vs its cosine equivalent: the shipped 4-budget
    cpu preset, the 8-budget log-spaced preset, and 8 log-spaced budgets over narrower ranges (the
    saving is max-budget-bound: sum(D) / (max B + c * sum(D)), so a wider range saves less)."""
    cases = [("cpu", {"pretrain.schedule": "wsd"}, "4 budgets 7.5k-60k"),
             ("cpu-wsd-8", {}, "8 log-spaced 7.5k-60k")]
    for lo in (15000, 30000):
        cases.append(("cpu-wsd-8", {"pretrain.samples": _log_spaced(lo, 60000, 8)}, f"8 log-spaced {lo // 1000}k-60k"))
    rows = []
    for preset, sets, what in cases:
        trials = load_study("sample-budget", preset=preset, sets=sets).trials()
        budgets = sorted({t.pretrain.samples for t in trials})
        rows.append({"study": "sample-budget", "preset": preset, "budgets": what, "n_budgets": len(budgets),
                     **samples_trained(trials)})
    return rows
