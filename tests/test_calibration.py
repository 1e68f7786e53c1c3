"""The calibration suite at its fast size: the report's ratio intervals keep their promise (coverage of
the nominal 95% within 92-98%, "significant" under no effect at most 5%, an open end never significant),
and the suite fails the estimators they replaced (a percentile bootstrap over seeds and a significant()
that let an open lower end above 1 count; for the law fits, a percentile cluster bootstrap over design
points), which live only here, to show the suite can fail."""

from __future__ import annotations

import numpy as np
import polars as pl

from xtra.reports import calibration
from xtra.reports import efficiency as eff
from xtra.reports.calibration import laws
from xtra.reports.intervals import grouped_resamples, point_groups
from xtra.reports.scaling import NAMES_1D, fit_power_law
from xtra.reports.scaling.fit import natural_params
from xtra.reports.scaling.forms import (
    HUBER_DELTA,
    REFIT_OPTIONS,
    log_predict,
    minimize_from_starts,
    one_blas_thread,
    refit_starts,
)

OLD_REFITS = 10  # the bootstrap refits of the old fast size (its default size took 50)


def _old_significant(lo, hi, lo_open, hi_open):  # before #33: an open lower end above 1 counted
    if lo is None or hi is None:
        return None
    return (lo > 1 and not (lo_open and lo <= 1)) or (hi < 1 and not hi_open)


def _old_percentile_bootstrap(rows: pl.DataFrame, what: str, n_draws: int, seed: int) -> pl.DataFrame:
    """The estimator before #33: seeds resampled with replacement within each curve, percentile interval."""
    x = "samples" if what == "samples" else "params"
    bx, bm, _ = eff._matrix(rows.filter(pl.col("block_size") == 1), x, "top1", "block_size", "config_hash")
    ox, om, _ = eff._matrix(rows.filter(pl.col("block_size") == 2), x, "top1", "block_size", "config_hash")
    rng = np.random.default_rng(seed)
    point = eff._ratio(bx, bm.mean(axis=0), ox, om.mean(axis=0))
    values, statuses = [], []
    for _ in range(n_draws):
        r = eff._ratio(bx, bm[rng.integers(0, len(bm), len(bm))].mean(axis=0), ox,
                       om[rng.integers(0, len(om), len(om))].mean(axis=0))
        values.append(r["value"])
        statuses.append(r["status"])
    ci = eff.censored_interval(np.asarray(values), statuses)
    return pl.DataFrame([{"status": point["status"], "ratio": point["ratio"], "ratio_lo": ci["lo"],
                          "ratio_hi": ci["hi"], "lo_open": ci["lo_open"], "hi_open": ci["hi_open"],
                          "significant": _old_significant(ci["lo"], ci["hi"], ci["lo_open"], ci["hi_open"]),
                          "left_out": None}])


def test_the_report_ratio_intervals_pass_the_fast_calibration() -> None:
    result = calibration.run_suite("fast")
    assert calibration.failures(result) == []
    rows = {(r["kind"], r["design"]): r for r in result["rows"]}
    no_effect = rows[("samples ratio", "samples r=1 n=3")]
    assert 0.92 - 2 * no_effect["mc_se"] <= no_effect["coverage"] and no_effect["significant"] <= 0.05
    # a lost trial moves k=2's curve: every study names the budget it left out, none claims an effect
    lost = rows[("samples ratio", "samples r=1 n=3, k=2 lacks 60k in one seed")]
    assert lost["left_out_named"] == 1.0 and lost["significant"] == 0.0
    assert {r["kind"] for r in result["rows"]} >= {"1-D law: alpha", "1-D law: 95% PI of a new run at the held-out "
                                                                     "largest budget"}
    # the law intervals at this size: 20 studies cannot prove 92-98%, but one that covers far less fails
    laws = [r for r in result["rows"] if "law" in r["kind"]]
    assert laws and not [r for r in laws if "under-covers" in calibration.verdict(r)], laws
    page = calibration.to_markdown(result)
    assert "| samples ratio | samples r=1.3 n=3 | 1.3 | 3 | 4 | 120 |" in page and "| ok |" in page


def test_the_suite_fails_the_old_percentile_bootstrap_and_significant() -> None:
    result = calibration.run_suite("fast", estimator=_old_percentile_bootstrap)
    bad = "\n".join(calibration.failures(result))
    # with 3 seeds a resampled mean stays between the lowest and highest seed: too narrow an interval
    assert "samples r=1.3 n=3: under-covers" in bad, bad
    # an open lower end at the censoring bound 2 (k=2 lost its 60k budget) was called significant
    assert "samples r=1 n=3, k=2 lacks 60k in one seed: " in bad and "'significant' under no effect" in bad, bad


def _old_cluster_bootstrap(x: np.ndarray, L: np.ndarray, n_draws: int, seed: int) -> laws.LawEstimate:
    """The 1-D law intervals before #33's second part: design points resampled with replacement (all seeds
    of a point together), each resample refitted (Huber, from the full fit and the resample's own grid
    starts), percentile intervals; the PI is the held-out refit's bootstrap fits times a new run's scatter
    s * t_{n-p}."""
    rng = np.random.default_rng(seed)

    def bootstrap(xs: np.ndarray, ys: np.ndarray) -> tuple[object, np.ndarray, float, int]:
        fit = fit_power_law(xs, ys, n_boot=0)
        logs, ly = [np.log(xs / fit.refs[0])], np.log(ys / fit.refs[-1])
        groups, boot = point_groups(xs[:, None]), []
        with one_blas_thread():
            while len(boot) < OLD_REFITS:
                idx = grouped_resamples(groups, rng)
                if len(np.unique(xs[idx])) < 3:
                    continue  # the resample cannot identify E, A and alpha
                b_logs = [lg[idx] for lg in logs]
                theta, _ = minimize_from_starts(fit.form, refit_starts(fit.form, b_logs, ly[idx], warm=fit.theta),
                                                b_logs, ly[idx], HUBER_DELTA, REFIT_OPTIONS)
                boot.append(theta)
        resid = ly - log_predict(fit.form, fit.theta, logs, len(ly))
        df = max(1, len(resid) - fit.form.n_params)
        return fit, np.asarray(boot), float(np.sqrt(np.sum((resid - resid.mean()) ** 2) / df)), df

    fit, boot, _, _ = bootstrap(x, L)
    draws = natural_params(fit.form, boot, fit.refs, NAMES_1D)
    ci = {k: tuple(np.percentile(v, [2.5, 97.5])) for k, v in draws.items()}
    mask = x == x.max()
    held, hboot, scatter, df = bootstrap(x[~mask], L[~mask])
    fits = held.refs[-1] * np.exp(log_predict(held.form, hboot[np.arange(2000) % len(hboot)],
                                              [np.log(x[mask] / held.refs[0])]))
    lo, hi = np.percentile(fits * np.exp(scatter * rng.standard_t(df, size=fits.shape)), [2.5, 97.5], axis=0)
    return laws.LawEstimate(fit.params, ci, (lo, hi))


def test_the_suite_fails_the_old_cluster_bootstrap_of_a_law() -> None:
    """On the block-size cpu study's 4 budgets a bootstrap of 4 design points has few distinct resamples: its
    percentile intervals covered 62-70% of the truth in 40 studies (and the PI 67%)."""
    fast = calibration.SIZES["fast"]
    (design,) = [d for d in laws.designs() if d.name in fast["law_designs"]]
    rows = laws.run_design(design, fast["law_reps"], fast["law_draws"], seed=2000,
                           estimator=_old_cluster_bootstrap)
    verdicts = {r["kind"]: calibration.verdict(r) for r in rows}
    assert "under-covers" in verdicts["1-D law: alpha"], verdicts
    assert "under-covers" in verdicts["1-D law: 95% PI of a new run at the held-out largest budget"], verdicts
