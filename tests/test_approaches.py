"""The isoFLOP estimators from a known truth: Chinchilla's approaches 1 and 2 beside 3 (and whether they
agree), the effective data multiplier per budget and inside the law, extrapolation without the largest N
and D; their calibration (coverage of the 95% interval, shown to fail for too narrow a noise model); and
the report section they make, from a study written through the runner's own writers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from xtra.reports import approaches, extrapolation, isoflop_calibration, multiplier
from xtra.reports.build import build_report
from xtra.reports.calibration.synthetic import write_trials

DESIGN = isoflop_calibration.designs()[0]


def _study(mult: float = 1.0, noise: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    if noise:
        return isoflop_calibration.simulate(DESIGN, np.random.default_rng(seed), mult)
    quiet = isoflop_calibration.Design("noise-free", DESIGN.truth, DESIGN.compute, DESIGN.budgets, DESIGN.sizes,
                                       seed_sd=0.0, run_sd=0.0)
    return isoflop_calibration.simulate(quiet, np.random.default_rng(seed), mult)


def test_approach_2_recovers_the_true_exponent_up_to_its_grid_bias() -> None:
    s = _study()
    p = approaches.design_points(s["N"], s["D"], s["L"], s["F"], s["seed"])
    assert p.n_lines == 3 and len(p.N) == 15
    e2 = approaches.empirical_exponent(p, 2, p.log_loss[None, :].repeat(4, axis=0))
    assert abs(e2.value - DESIGN.true_slope()) < 0.03
    assert not e2.has_interval  # no noise estimate: no interval, never a zero-width one
    # every line's vertex within one size of the true optimum
    from xtra.reports.scaling.compute import optimal_allocation

    n_true, _ = optimal_allocation(DESIGN.truth, DESIGN.compute, np.asarray(DESIGN.budgets))
    for row, n in zip(e2.lines, n_true):
        assert abs(math.log(row["N_opt"] / n)) < math.log(2.2)


def test_three_approaches_agree_on_a_law_and_state_the_grid_bias() -> None:
    s = _study(noise=True, seed=3)
    res = approaches.three_approaches(s["N"], s["D"], s["L"], s["F"], s["seed"], n_boot=20, n_draws=500)
    assert [e.approach[0] for e in res.exponents] == ["1", "2", "3"]
    e1, e2, e3 = res.exponents
    assert e2.has_interval and e2.lo <= DESIGN.true_slope() <= e2.hi
    assert math.isfinite(e3.value)
    assert "widened" in e1.note  # approach 1 is resolved to the grid's step, and says so
    assert "sizes 1.95x apart" in res.bias or "x apart (step" in res.bias
    assert "grid bias of" in res.bias
    assert res.verdict.startswith("approaches 1, 2, 3 agree") or "disagree" in res.verdict


def test_disagreement_names_the_pairs_that_do_not_overlap() -> None:
    e = approaches.Exponent
    verdict = approaches.agreement([e("1: envelope", 0.5, 0.4, 0.6, 0.0), e("2: isoFLOP parabolas", 0.9, 0.8, 1.0, 0.0),
                                    e("3: L(N, D) law", 0.55, 0.45, 0.85, 0.0)])
    assert verdict == "approaches disagree: the 95% intervals of 1 vs 2 do not overlap"
    one = approaches.agreement([e("1: envelope", 0.5, 0.4, 0.6, 0.0), e("2: isoFLOP parabolas", math.nan,
                                                                         math.nan, math.nan, 1.0)])
    assert one.startswith("cannot compare")


def test_an_optimum_at_the_edge_of_the_sizes_is_no_optimum() -> None:
    s = _study()
    keep = s["N"] >= 2.1e5  # the three largest sizes: every line's loss still falls toward smaller N
    keep &= True
    p = approaches.design_points(s["N"][keep], s["D"][keep], s["L"][keep], s["F"][keep], s["seed"][keep])
    small = approaches.design_points(*(s[k][s["N"] <= 2.1e5] for k in ("N", "D", "L", "F", "seed")))
    argmins = approaches.line_optima(small, small.log_loss[None, :], 1)[0]
    assert np.isfinite(argmins).any() or np.isnan(argmins).all()
    edge = approaches.line_optima(p, p.log_loss[None, :], 1)[0]
    # with the optimum (~2.3e5-4.3e5) at or below the smallest kept size on some line, that line has none
    assert np.isnan(edge).any()


def test_multiplier_reads_the_true_factor_and_bounds_the_censored_budgets() -> None:
    base, other = _study(), _study(mult=2.0)
    ms, how = multiplier.per_budget(base, other, n_draws=200)
    reached = [m for m in ms if m.status == "reached"]
    assert reached and all(abs(m.value / 2.0 - 1) < 0.05 for m in reached)
    largest = [m for m in ms if m.D == max(x.D for x in ms if x.N == m.N)]
    assert all(m.status == "never" and m.value == pytest.approx(1.0) for m in largest)  # M >= 1 only: a bound
    assert "one seed" in how or "no parabola" in how
    law = multiplier.in_law(base, other, n_boot=20)
    assert abs(law.value / 2.0 - 1) < 0.05 and law.n_points == 15


def test_extrapolation_without_the_largest_n_and_d() -> None:
    s = _study(noise=True, seed=5)
    tests = extrapolation.extrapolation_tests(s["N"], s["D"], s["L"], n_boot=20)
    assert [t.what.split(" (")[0] for t in tests] == ["the largest N", "the largest D"]
    by_n = tests[0]
    assert by_n.ran and by_n.n_left == 3 and by_n.n_train == 12 and not by_n.weak
    assert by_n.mean_abs_error < 0.05 and 0 <= by_n.inside <= 3
    small = extrapolation.extrapolation_tests([1e5, 2e5, 1e5, 2e5], [1e4, 1e4, 2e4, 2e4], [3.0, 2.9, 2.8, 2.7])
    assert all(not t.ran and "design points left" in t.reason for t in small)
    assert extrapolation.support_lines([(1, 10), (2, 10), (1, 20), (2, 20)])[0].startswith(
        "extrapolation without the largest N: cannot be tested")


def test_calibration_covers_and_fails_a_too_narrow_noise_model() -> None:
    design = isoflop_calibration.designs()[1]  # 3 seeds: the seed-clustered multiplier draws
    rows = {r["kind"]: r for r in isoflop_calibration.run_design(design, 40, 0, 600, 10, seed=11)}
    a2 = rows["approach 2 a"]
    assert a2["reps"] >= 36 and a2["coverage"] >= 0.85 and abs(a2["bias"]) < 0.05
    assert rows["approach 1 a"]["coverage"] >= 0.9  # widened to the grid's resolution: conservative
    assert rows["multiplier M(D)"]["coverage"] >= 0.88
    # the same estimator with draws a third as wide (a noise model that ignores most of the spread) fails
    truth = design.true_slope()
    rng = np.random.default_rng(12)
    hits = []
    for r in range(40):
        s = isoflop_calibration.simulate(design, rng)
        p = approaches.design_points(s["N"], s["D"], s["L"], s["F"], s["seed"])
        draws, _ = approaches.loss_draws(p, np.random.default_rng(r), 600)
        narrow = p.log_loss + (draws - p.log_loss) / 3
        e = approaches.empirical_exponent(p, 2, narrow)
        hits.append(e.lo <= truth <= e.hi)
    assert np.mean(hits) < a2["coverage"] - 0.15


def _write_isoflop_study(root: Path) -> Path:
    """Two k on the calibration design's lines, through the runner's writers (trialdir, studydir)."""
    rng = np.random.default_rng(0)
    trials = []
    for k, mult in ((1, 1.0), (2, 2.0)):
        s = isoflop_calibration.simulate(DESIGN, rng, mult)
        for i, (n, d, loss, f) in enumerate(zip(s["N"], s["D"], s["L"], s["F"])):
            width = int(round(math.sqrt(n)))
            trials.append({"config_hash": f"k{k}-{i:03d}".ljust(12, "0"), "trial_id": f"k{k}-{i}", "seed": 0,
                           "params": {"pretrain.samples": int(d), "model.width": width, "model.block_size": k},
                           "result": {"block_size": k, "width": width, "depth": 4, "n_params": int(n) + 5000,
                                      "n_params_encoder": int(n), "flops_per_image": f, "samples_seen": int(d),
                                      "train_loss": loss, "val_loss": loss, "wall_s": 1.0}})
    axes = {"pretrain.samples": sorted({t["params"]["pretrain.samples"] for t in trials}),
            "model.width": sorted({t["params"]["model.width"] for t in trials}), "model.block_size": [1, 2]}
    return write_trials(root, name="isoflop-synthetic", axes=axes, base={}, trials=trials)


def test_the_report_shows_the_three_approaches_the_multiplier_and_the_extrapolation(tmp_path: Path) -> None:
    root = _write_isoflop_study(tmp_path / "study")
    index = build_report(root, n_boot=10)
    page = index.read_text()
    for table in ("table-approaches", "table-multiplier", "table-extrapolation"):
        assert f'id="table-{table[6:]}"' in page or table in page
    assert "Three approaches to N_opt(C)" in page and "Effective data multiplier per k" in page
    summary = (index.parent / "summary.md").read_text()
    assert "k=1: three approaches" in summary and "k=2: three approaches" in summary
    assert "k=2: data multiplier" in summary and "inside one law L(N, M·D) fitted to both: M = " in summary
    assert "k=1: extrapolation" in summary and "without the largest N" in summary


def test_multiplier_matches_a_size_across_k_by_its_encoder_not_its_pixel_head() -> None:
    base, other = _study(), _study(mult=2.0)
    other["N"] = other["N"] + 7_000  # k's larger pixel head: the whole-model count moves, the size does not
    assert multiplier.per_budget(base, other, n_draws=50)[0] == []  # no N in common: nothing is compared
    base["S"], other["S"] = base["N"].copy(), other["N"] - 7_000
    ms, _ = multiplier.per_budget(base, other, n_draws=50)
    reached = [m for m in ms if m.status == "reached"]
    assert len(ms) == 15 and reached and all(abs(m.value / 2.0 - 1) < 0.05 for m in reached)
    assert abs(multiplier.in_law(base, other, n_boot=5).value / 2.0 - 1) < 0.05


def test_the_law_multiplier_counts_each_seeds_offset_and_gives_no_interval_with_one_seed() -> None:
    """M_k's interval covers the true multiplier at 3 seeds; the same joint fit's plain t-interval (every run
    independent, the offsets ignored) covers far less, as the earlier law draws did (72% at 3 seeds)."""
    design = isoflop_calibration.designs()[1]
    rng = np.random.default_rng(3)
    hits, plain = [], []
    for r in range(30):
        base, other = (isoflop_calibration.simulate(design, rng, m) for m in (1.0, design.multiplier))
        law = multiplier.in_law(base, other, n_boot=50, seed=r)
        assert math.isfinite(law.lo) and law.lo < law.value < law.hi and "random effect" in law.text()
        hits.append(law.lo <= design.multiplier <= law.hi)
        independent = multiplier.in_law(base, other, n_boot=50, seed=r, seed_offsets=False)
        assert independent.value == pytest.approx(law.value)
        plain.append(independent.lo <= design.multiplier <= independent.hi)
    assert np.mean(hits) >= 0.85 and np.mean(plain) < np.mean(hits) - 0.1, (np.mean(hits), np.mean(plain))
    one = isoflop_calibration.designs()[0]
    base, other = (isoflop_calibration.simulate(one, rng, m) for m in (1.0, one.multiplier))
    law = multiplier.in_law(base, other, n_boot=50)
    assert math.isfinite(law.value) and not math.isfinite(law.lo)
    assert "no interval with one seed in a group" in law.text()


def test_an_extrapolation_whose_refit_sits_at_a_bound_gets_the_refitting_bootstrap_t() -> None:
    """Left out the largest N, E is often negligible in the refit, where the linearised PI is not valid (it
    gave none, and the calibration once counted those as misses): the bootstrap-t gives one that covers."""
    rng = np.random.default_rng(5)
    hits, bounded = [], 0
    for r in range(40):
        s = isoflop_calibration.simulate(DESIGN, rng)
        test = extrapolation.extrapolation_tests(s["N"], s["D"], s["L"], n_boot=50, seed=r)[0]
        assert test.ran and all(math.isfinite(lo) and lo < hi for _, _, lo, hi in test.runs)
        if "bootstrap-t" in test.note:
            bounded += 1
            assert "bootstrap-t" in test.text()
            hits += [lo <= actual <= hi for actual, _, lo, hi in test.runs]
    assert bounded >= 8 and np.mean(hits) >= 0.85
