"""`xtra bench --sections probe` at a study's scale: every probe a finished study would run, timed
against the pretraining that produced its checkpoints (issue #34's probing-to-pretraining ratio)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from xtra import trialdir as td
from xtra.benchmarks.probe import CPU_PROBE, CPU_PROBE_WHITENED_8, cfg_summary, pretrain_rate, wilson
from xtra.checkpoint import CHECKPOINT
from xtra.config import ProbeConfig
from xtra.probe import Log, probe_checkpoints


def study_checkpoints(study_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """The probed points of a finished (or partly finished) study: one entry per trial with a final
    checkpoint ({"trial", "config", "checkpoint"}), and the samples the study pretrained (every trunk's
    samples plus every other trial's own steps: a wsd branch its cooldown, a cosine trial its budget)."""

    points, pretrained = [], 0
    for run in td.trial_dirs(Path(study_dir)):
        cfg = td.read_config(run)
        params = td.read_json(run / td.PARAMS) or {}
        if cfg is None:
            continue
        pre = cfg.pretrain
        if params.get("role") == "trunk":
            pretrained += pre.samples
            continue
        if not (run / CHECKPOINT).is_file() or td.checkpoint_samples(run) != pre.samples:
            continue  # not finished yet
        wsd = pre.schedule == "wsd" and pre.cooldown_fraction > 0
        pretrained += round(pre.cooldown_fraction * pre.samples) if wsd else pre.samples
        points.append({"trial": run.name, "config": cfg, "checkpoint": run / CHECKPOINT})
    return sorted(points, key=lambda p: (p["config"].model.block_size, p["config"].pretrain.samples)), pretrained


def bench_probe_study(study_dir: Path, presets: dict[str, ProbeConfig] | None = None, *,
                      log: Log | None = None, **kwargs: Any) -> dict[str, Any]:
    """Issue #34's figures on a study's own checkpoints (`xtra study run block-size --preset cpu`): every
    finished trial's final checkpoint (`study_checkpoints`), see `bench_probe_points`."""
    points, pretrained = study_checkpoints(study_dir)
    if not points:
        raise ValueError(f"{study_dir}: no finished trial with a checkpoint to probe")
    return {"study_dir": str(study_dir), **bench_probe_points(points, pretrained, len(points), presets, log=log,
                                                             **kwargs)}


def bench_probe_points(points: list[dict[str, Any]], pretrained: int, n_probes: int,
                       presets: dict[str, ProbeConfig] | None = None, *, converge: str = "after",
                       converge_trials: int = 1, before_trials: int = 1, rate_samples: int = 3_072,
                       log: Log | None = None) -> dict[str, Any]:
    """A study's probing against its pretraining, side by side in one process. `points`: checkpoints of
    the study ({"trial", "config" (its TrialConfig), "checkpoint"}); `pretrained`: the samples the study
    pretrains; `n_probes`: the probes it runs (one per trial). The preset `converge` (default: the `cpu`
    preset now) probes every point as a trial does (`probe_checkpoints`, both kinds), each other preset
    (default: the 8-epoch preset of issue #34's first pass) the first `before_trials` of them, in turn; the study's
    probing is `n_probes` x the mean probe time, its pretraining `pretrained` samples at the rate of the
    `cpu` recipe timed here before and after (`pretrain_rate`, the faster), so probing / pretraining is
    a ratio of times taken under the same load. Convergence: on the first `converge_trials` points, the
    attentive probe of `converge` against the same probe trained 4x longer (epochs and warmup). Every
    test top-1 with its 95% Wilson interval (the test split is the whole 10,000-image test set)."""
    presets = presets or {"before": CPU_PROBE_WHITENED_8, "after": CPU_PROBE}
    log = log or (lambda msg: None)
    out: dict[str, Any] = {"device": "cpu", "torch_threads": torch.get_num_threads(),
                           "pretrained_samples": pretrained,
                           "presets": {n: cfg_summary(c) for n, c in presets.items()}, "probes": []}
    rates = [pretrain_rate(rate_samples)]
    log(f"pretraining rate {rates[0] * 1e3:.2f} ms/sample")
    for i, point in enumerate(points):
        cfg = point["config"]
        for name, probe_cfg in presets.items():
            if name != converge and i >= before_trials:
                continue
            t0 = time.perf_counter()
            rows = probe_checkpoints({cfg.pretrain.samples: point["checkpoint"]}, cfg.data, probe_cfg, cfg.seed,
                                     expect_model=cfg.model, device="cpu")
            wall = time.perf_counter() - t0
            entry = {"preset": name, "trial": point["trial"], "block_size": cfg.model.block_size,
                     "samples": cfg.pretrain.samples, "probe_s": wall,
                     "rows": [{k: r.get(k) for k in ("kind", "top1", "best_lr", "best_l2", "best_val_top1",
                                                     "twin_val_top1", "still_improving", "best_epoch", "encode_s",
                                                     "head_s", "n_train", "n_test")}
                              | {"ci95": wilson(r["top1"], r["n_test"])} for r in rows]}
            out["probes"].append(entry)
            log(f"{name} k={entry['block_size']} {entry['samples']}: {wall:.0f} s, "
                + ", ".join(f"{r['kind']} {100 * r['top1']:.2f}%{' (improving)' if r['still_improving'] else ''}"
                            for r in entry["rows"]))
    rates.append(pretrain_rate(rate_samples))
    out["pretrain_s_per_sample"] = rates
    out["pretrain_s"] = pretrained * min(rates)  # the less disturbed of the two timings
    by_preset: dict[str, list[float]] = {}
    for entry in out["probes"]:
        by_preset.setdefault(entry["preset"], []).append(entry["probe_s"])
    n = n_probes
    out["study"] = {name: {"probes_timed": len(times), "probe_s_mean": sum(times) / len(times),
                           "study_probe_s": n * sum(times) / len(times),
                           "ratio": n * sum(times) / len(times) / out["pretrain_s"]}
                    for name, times in by_preset.items()}
    out["n_points"] = n
    out["converge"] = []
    for point in points[:converge_trials]:
        cfg = point["config"]
        base = dataclasses.replace(presets[converge], kinds=("attentive",))
        longer = dataclasses.replace(base, epochs=4 * base.epochs, warmup_epochs=4 * base.warmup_epochs)
        short = next(r for e in out["probes"] if e["trial"] == point["trial"] and e["preset"] == converge
                     for r in e["rows"] if r["kind"] == "attentive")
        t0 = time.perf_counter()
        (row,) = probe_checkpoints({cfg.pretrain.samples: point["checkpoint"]}, cfg.data, longer, cfg.seed,
                                   expect_model=cfg.model, device="cpu")
        item = {"trial": point["trial"], "block_size": cfg.model.block_size, "samples": cfg.pretrain.samples,
                "epochs": base.epochs, "top1": short["top1"], "best_lr": short["best_lr"],
                "still_improving": short["still_improving"], "epochs_4x": longer.epochs, "top1_4x": row["top1"],
                "best_lr_4x": row["best_lr"], "still_improving_4x": row["still_improving"],
                "s_4x": time.perf_counter() - t0, "gap_points": 100 * (row["top1"] - short["top1"])}
        out["converge"].append(item)
        log(f"attentive convergence k={item['block_size']}: {100 * item['top1']:.2f}% at {item['epochs']} epochs vs "
            f"{100 * item['top1_4x']:.2f}% at {item['epochs_4x']} (gap {item['gap_points']:+.2f} points)")
    return out


def convergence_over_seeds(points: list[dict[str, Any]], cfg: ProbeConfig, seeds: tuple[int, ...] = (0, 1, 2), *,
                           factor: int = 4, level: float = 0.95, log: Log | None = None) -> dict[str, Any]:
    """Issue #34's item 7 beyond a single head: on every point (a study's checkpoint), for every probe
    seed (the heads' init and shuffles; the probe-train subset stays the same), the attentive probe of
    `cfg` against the same probe trained `factor` times longer (epochs and warmup), each scored on the
    whole test split. One pair differs by the heads' own noise (two heads a float rounding apart ended
    up to 0.6 points apart), so the claim is about the mean gap and its `level` t-interval
    (`gap_summary`)."""
    log = log or (lambda msg: None)
    base = dataclasses.replace(cfg, kinds=("attentive",))
    longer = dataclasses.replace(base, epochs=factor * base.epochs, warmup_epochs=factor * base.warmup_epochs)
    pairs = []
    for point in points:
        trial_cfg = point["config"]
        for seed in seeds:
            top1 = {}
            for name, probe_cfg in (("short", base), ("long", longer)):
                t0 = time.perf_counter()
                (row,) = probe_checkpoints({trial_cfg.pretrain.samples: point["checkpoint"]}, trial_cfg.data,
                                           probe_cfg, seed, expect_model=trial_cfg.model, device="cpu")
                top1[name] = row
                top1[name + "_s"] = time.perf_counter() - t0
            pair = {"trial": point["trial"], "block_size": trial_cfg.model.block_size,
                    "samples": trial_cfg.pretrain.samples, "seed": seed, "epochs": base.epochs,
                    "epochs_long": longer.epochs, "top1": top1["short"]["top1"], "top1_long": top1["long"]["top1"],
                    "best_lr": top1["short"]["best_lr"], "best_lr_long": top1["long"]["best_lr"],
                    "still_improving": top1["short"]["still_improving"],
                    "still_improving_long": top1["long"]["still_improving"],
                    "gap_points": 100 * (top1["long"]["top1"] - top1["short"]["top1"]),
                    "s": top1["short_s"], "s_long": top1["long_s"]}
            pairs.append(pair)
            log(f"k={pair['block_size']} {pair['samples']} seed {seed}: {100 * pair['top1']:.2f}% at {base.epochs} "
                f"epochs, {100 * pair['top1_long']:.2f}% at {longer.epochs} (gap {pair['gap_points']:+.2f} points"
                f"{', flagged' if pair['still_improving'] else ''})")
    return {"epochs": base.epochs, "epochs_long": longer.epochs, "seeds": list(seeds),
            **gap_summary(pairs, level)}


def gap_summary(pairs: list[dict[str, Any]], level: float = 0.95) -> dict[str, Any]:
    """`convergence_over_seeds`' figures from its pairs (also for pairs measured in several processes).
    The mean gap's `level` t-interval is over the checkpoints' means when there are several: pairs on one
    checkpoint share its encoder, so they are not independent draws of the gap and an interval over
    every pair would claim more than they hold ("interval_over": "checkpoints", df = checkpoints - 1);
    on a single checkpoint it is over its pairs, a statement about that checkpoint ("pairs")."""
    from scipy import stats

    by_point: dict[str, list[float]] = {}
    for p in pairs:
        by_point.setdefault(p["trial"], []).append(p["gap_points"])
    point_means = {t: sum(g) / len(g) for t, g in by_point.items()}
    gaps = torch.tensor([p["gap_points"] for p in pairs], dtype=torch.float64)
    units = torch.tensor(list(point_means.values()) if len(point_means) > 1 else gaps.tolist(), dtype=torch.float64)
    n = len(units)
    mean = float(units.mean())
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(units.std()) / n**0.5 if n > 1 else float("nan")
    return {"pairs": pairs, "mean_gap_points": mean,
            "sd_gap_points": float(gaps.std()) if len(gaps) > 1 else float("nan"), "level": level,
            "interval_over": "checkpoints" if len(point_means) > 1 else "pairs",
            "mean_gap_interval": [mean - half, mean + half], "mean_gap_by_trial": point_means,
            "flagged": sum(bool(p["still_improving"]) for p in pairs),
            "flagged_long": sum(bool(p.get("still_improving_long")) for p in pairs)}
