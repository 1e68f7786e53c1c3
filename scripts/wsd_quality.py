"""WSD branches vs cosine runs of the same budget: final val loss and linear top-1, over seeds.

Uses the library directly (no Ray, no runner): per seed, one wsd trunk (no cooldown) extended
budget by budget to each branch point with a kept checkpoint there (`pretrain(keep_at=...)`), one
branch per budget from that checkpoint (`pretrain(init_from=...)`), and one cosine run per budget
from scratch; every final checkpoint gets the same linear probe. Resumable: rerun the same command
and finished runs and probes are reused. The summary (JSON + Markdown) is rewritten after every run,
so a partial run still reports what it measured.

    .venv/bin/python scripts/wsd_quality.py --budgets 7500,15000,30000 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# Everything imported up front: this process keeps the code it started with.
from xtra.checkpoint import atomic_write_json, atomic_write_text, kept_checkpoint  # noqa: E402
from xtra.config import DataConfig, PretrainConfig, ProbeConfig, model_config  # noqa: E402
from xtra.pretrain import pretrain  # noqa: E402
from xtra.probe import probe_run  # noqa: E402
from xtra.schedule import branch_point, trunk_config  # noqa: E402


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t confidence interval (nan with one value)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    budgets = sorted(int(b) for b in args.budgets.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work)
    model = model_config("cpu-s", block_size=2)
    data = DataConfig(name="fashion-mnist")
    base = PretrainConfig(samples=budgets[0], batch_size=128, warmup_samples=args.warmup, checkpoint_every=10_000,
                          device="cpu")
    probe_cfg = ProbeConfig(kinds=("linear",), epochs=args.probe_epochs, warmup_epochs=0,
                            limit_train=args.probe_train, cache="memory")
    results_path = work / "runs.json"
    runs = json.loads(results_path.read_text()) if results_path.exists() else {}

    def record(key: str, fn, *fn_args, **fn_kw) -> dict:
        if key not in runs:
            t0 = time.perf_counter()
            runs[key] = {**fn(*fn_args, **fn_kw), "wall_s": time.perf_counter() - t0}
            atomic_write_json(results_path, runs)
            summarize(runs, budgets, seeds, args)
        print(key, {k: v for k, v in runs[key].items() if not isinstance(v, dict)}, flush=True)
        return runs[key]

    def grow_trunk(cfg: PretrainConfig, trunk_dir: Path, seed: int, keep_at: tuple[int, ...]) -> dict:
        out = pretrain(model, data, cfg, trunk_dir, seed=seed, keep_at=keep_at)
        return {"reach": cfg.samples, "samples_seen": out["samples_seen"]}

    def train_and_probe(cfg: PretrainConfig, run_dir: Path, seed: int, **kw) -> dict:
        trained = pretrain(model, data, cfg, run_dir, seed=seed, **kw)
        probed = probe_run(run_dir, None, probe_cfg, seed=seed)
        return {"samples": cfg.samples, "trained_samples": trained["samples_seen"] - trained["init_samples"],
                "val_loss": trained["val_loss"], "train_loss": trained["train_loss"],
                "linear_top1": probed["linear"]["test_top1"], "linear_best_lr": probed["linear"]["best_lr"]}

    for i, budget in enumerate(budgets):
        for seed in seeds:
            wsd = replace(base, samples=budget, schedule="wsd", cooldown_fraction=args.cooldown,
                          cooldown_shape=args.shape)
            points = [branch_point(replace(wsd, samples=b)) for b in budgets[: i + 1]]
            trunk_dir = work / f"seed{seed}" / "trunk"

            record(f"seed{seed}/trunk-to-{points[-1]}", grow_trunk, trunk_config(wsd, reach=points[-1]), trunk_dir,
                   seed, tuple(points))
            record(f"seed{seed}/wsd-{budget}", train_and_probe, wsd, work / f"seed{seed}" / f"wsd-{budget}", seed,
                   init_from=kept_checkpoint(trunk_dir, points[-1]))
            record(f"seed{seed}/cosine-{budget}", train_and_probe, replace(base, samples=budget),
                   work / f"seed{seed}" / f"cosine-{budget}", seed)


def summarize(runs: dict, budgets: list[int], seeds: list[int], args: argparse.Namespace) -> None:
    rows = []
    for budget in budgets:
        pairs = [(runs.get(f"seed{s}/wsd-{budget}"), runs.get(f"seed{s}/cosine-{budget}")) for s in seeds]
        pairs = [(w, c) for w, c in pairs if w and c]
        if not pairs:
            continue
        row = {"budget": budget, "seeds": len(pairs)}
        for metric in ("val_loss", "linear_top1"):
            for name, values in (("wsd", [w[metric] for w, _ in pairs]), ("cosine", [c[metric] for _, c in pairs]),
                                 ("diff", [w[metric] - c[metric] for w, c in pairs])):
                row[f"{metric}_{name}"], row[f"{metric}_{name}_ci95"] = t_interval(values)
        rows.append(row)
    trained, equivalent = {}, {}
    for s in seeds:  # over the budgets with both runs done: trunk to the deepest branch point + cooldowns
        done = [(runs[f"seed{s}/wsd-{b}"], runs[f"seed{s}/cosine-{b}"]) for b in budgets
                if f"seed{s}/wsd-{b}" in runs and f"seed{s}/cosine-{b}" in runs]
        trained[s] = max((w["samples"] - w["trained_samples"] for w, _ in done), default=0) + sum(
            w["trained_samples"] for w, _ in done)
        equivalent[s] = sum(c["trained_samples"] for _, c in done)
    setting = {"model": "cpu-s, block_size 2", "data": "fashion-mnist (54k train)", "batch_size": 128, "lr": 1e-3,
               "min_lr": 1e-5, "warmup_samples": args.warmup, "cooldown_fraction": args.cooldown,
               "cooldown_shape": args.shape, "probe": f"linear, {args.probe_epochs} epochs, "
               f"{args.probe_train or 'all'} train images, test top-1 at the lr best on val",
               "threads": args.threads}
    out = {"setting": setting, "rows": rows, "samples_trained_wsd": trained, "samples_trained_cosine": equivalent,
           "runs": runs}
    atomic_write_json(Path(args.out), out)
    lines = ["| budget | seeds | val loss wsd | val loss cosine | Δ (wsd − cosine) | linear top-1 wsd | "
             "linear top-1 cosine | Δ (wsd − cosine) |", "|---|---|---|---|---|---|---|---|"]
    def f(r: dict, key: str) -> str:
        m, ci = r[key], r[f"{key}_ci95"]
        return f"{m:.4f} ± {ci:.4f}" if ci == ci else f"{m:.4f}"

    for r in rows:
        lines.append(f"| {r['budget']:,} | {r['seeds']} | {f(r, 'val_loss_wsd')} | {f(r, 'val_loss_cosine')} | "
                     f"{f(r, 'val_loss_diff')} | {f(r, 'linear_top1_wsd')} | {f(r, 'linear_top1_cosine')} | "
                     f"{f(r, 'linear_top1_diff')} |")
    lines += ["", "± is the half-width of the 95% t interval over seeds; Δ is paired by seed.", "",
              "Samples trained per seed (wsd: trunk + cooldowns; cosine: every budget from scratch): "
              + ", ".join(f"seed {s}: {trained[s]:,} vs {equivalent[s]:,}" for s in seeds), "",
              "Setting: " + "; ".join(f"{k} {v}" for k, v in setting.items())]
    atomic_write_text(Path(args.out).with_suffix(".md"), "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="7500,15000")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--warmup", type=int, default=750)
    parser.add_argument("--cooldown", type=float, default=0.2)
    parser.add_argument("--shape", default="1-sqrt")
    parser.add_argument("--probe-epochs", type=int, default=2)
    parser.add_argument("--probe-train", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="runs/wsd-quality")
    parser.add_argument("--out", default="docs/wsd-quality-cpu.json")
    args = parser.parse_args()
    json.dumps(asdict(PretrainConfig()))  # the config module imports cleanly before any work
    run(args)


if __name__ == "__main__":
    main()
