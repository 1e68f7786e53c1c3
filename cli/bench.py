"""`xtra bench`: throughput, MFU, attention kernels, probing, reports and orchestration, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from xtra.cli.options import user_errors

console = Console()
SECTIONS = ("pretrain", "attention", "probe", "report", "orchestration", "scaling", "data", "wsd", "calibration",
            "faults")
BY_NAME = ("calibration", "faults")  # they write docs/*-cpu.*: asked by name
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in BY_NAME)
CALIBRATION_DOC = Path("docs/calibration-cpu.json")  # and .md beside it (reports/calibration)
FAULTS_DOC = Path("docs/faults-cpu.json")  # and .md beside it (xtra.studies.fault_campaign)


def bench_cmd(
    out: Annotated[Path, typer.Option(help="Where to write the JSON figures (Markdown beside it).")] = Path(
        "runs/bench/bench.json"),
    sections: Annotated[str, typer.Option(help=f"Comma-separated subset of: {', '.join(SECTIONS)} (calibration "
                                                f"and faults only by name: they write {CALIBRATION_DOC}, "
                                                f"{FAULTS_DOC} and .md).")] = ",".join(DEFAULT_SECTIONS),
    quick: Annotated[bool, typer.Option(help="Fewer sizes and repeats (a smoke run of the benchmark itself).")] = False,
    compare_to: Annotated[Path | None, typer.Option("--compare", help="An earlier bench JSON: print ratios.")] = None,
    compile: Annotated[bool, typer.Option("--compile/--no-compile", help="Also measure torch.compile.")] = False,
    seed: Annotated[int, typer.Option(help="The fault campaign's seed (--sections faults).")] = 0,
) -> None:
    """Measure xtra on this machine; figures are ratios measured in one run (nothing is asserted)."""
    import torch

    from xtra import benchmarks as bench

    with user_errors():
        chosen, previous = _parse_sections(sections), _previous(compare_to)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results: dict = {"environment": bench.environment()}
    repeats = 2 if quick else 3
    if "pretrain" in chosen:
        _pretrain_section(results, device, quick, repeats, compile)
    if "attention" in chosen:
        kw = dict(tokens=64, heads=3, head_dim=32, batch=64) if device.type == "cpu" else {}
        results["attention"] = bench.bench_attention(device, repeats=repeats, **kw)
        for row in results["attention"]:
            console.print(_line("attention", row))
    if "probe" in chosen:
        _probe_section(results, quick, out)
    _study_sections(results, chosen, quick)
    if "calibration" in chosen:  # every interval the report prints, on synthetic studies from a known truth
        results["calibration"] = _calibration(quick, out)
    if "faults" in chosen:  # random faults injected into running studies, checked against uninterrupted runs
        results["faults"] = _faults(quick, out, seed)

    out.parent.mkdir(parents=True, exist_ok=True)
    flat: dict = {}
    for key, value in results.items():
        flat.update(_probe_tables(value) if key == "probe" else {key: value})
    bench.save(results, out)
    from xtra.checkpoint import atomic_write_text

    atomic_write_text(out.with_suffix(".md"), bench.to_markdown(flat))
    console.print(f"wrote {out} and {out.with_suffix('.md')}")
    if previous is not None:
        for row in bench.compare(results, previous):
            console.print(_line("vs previous", row))


def _parse_sections(sections: str) -> list[str]:
    chosen = [s.strip() for s in sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise ValueError(f"--sections {','.join(unknown)} is not known (allowed: {', '.join(SECTIONS)})")
    return chosen


def _previous(compare_to: Path | None) -> dict | None:
    if compare_to is None:
        return None
    if not compare_to.is_file():
        raise ValueError(f"--compare {compare_to}: no such file (expected a bench JSON from `xtra bench`)")
    try:
        return json.loads(compare_to.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"--compare {compare_to}: not JSON ({err})") from None


def _pretrain_section(results: dict, device, quick: bool, repeats: int, compile: bool) -> None:
    from xtra import benchmarks as bench

    peak = bench.matmul_peak(device)
    results["peak"] = peak
    console.print(f"matmul peak ({peak['dtype']}): {peak['flops_per_s'] / 1e9:.1f} GFLOP/s")
    if device.type == "cuda":
        grid = [("vit-b/16", k, b) for k in (1, 2, 4) for b in ("sdpa", "flex", "xformers", "auto")]
        batch = 128
    else:
        sizes = ("cpu-s",) if quick else ("cpu-s", "cpu-m")
        grid = [(s, k, b) for s in sizes for k in (1, 2, 4) for b in ("sdpa", "math")]
        batch = 64 if quick else 128
    rows = []
    for size, k, backend in grid:
        for compiled in ((False, True) if compile else (False,)):
            try:
                row = bench.bench_pretrain_step(size, k, backend, device, batch, repeats=repeats,
                                                peak=peak["flops_per_s"], compile=compiled)
            except Exception as err:  # noqa: BLE001 - a backend that fails here is reported, not fatal
                row = {"size": size, "block_size": k, "backend": backend, "compile": compiled,
                       "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}
            rows.append(row)
            console.print(_line("pretrain", row))
    results["pretrain"] = rows


def _probe_section(results: dict, quick: bool, out: Path) -> None:
    from xtra.benchmarks.probe import QUICK_PROTOCOL, bench_probe, bench_probe_protocol

    results["probe"] = bench_probe(epochs=1 if quick else 2, n_train=4000 if quick else 0, repeats=1 if quick else 2)
    results["probe"].pop("model", None)
    console.print(_line("probe", {k: v for k, v in results["probe"].items() if not isinstance(v, dict)}))
    for key in ("linear", "attentive", "linear_cache"):
        console.print(_line(f"probe {key}", results["probe"][key]))
    # convergence, official cost, checkpoints; the pretrained encoder is kept beside the figures: a second
    # full run reuses it (same config)
    protocol = bench_probe_protocol(**(QUICK_PROTOCOL if quick else {"run_dir": out.parent / "probe-encoder"}),
                                    log=lambda msg: console.print(f"  {msg}"))
    results["probe"]["sample_curve"] = protocol["checkpoints"].pop("curve")
    for key in ("convergence", "protocol", "checkpoints"):
        results["probe"][key] = protocol[key]
        console.print(_line(f"probe {key}", protocol[key]))
    if not quick:  # issue #25's figures on the same encoder: the cpu preset's probing before/after, side by side
        from xtra.benchmarks.probe import bench_probe_costs, bench_probe_overhead

        encoder_dir = out.parent / "probe-encoder"
        for key, fn in (("costs", bench_probe_costs), ("overhead", bench_probe_overhead)):
            results["probe"][key] = fn(encoder_dir, log=lambda msg: console.print(f"  {msg}"))
            console.print(_line(f"probe {key}", {k: v for k, v in results["probe"][key].items()
                                                 if not isinstance(v, dict)}))


def _study_sections(results: dict, chosen: list[str], quick: bool) -> None:
    """The report, orchestration, scaling, data and wsd sections."""
    if "report" in chosen:
        from xtra.studies.report_bench import bench_report

        results["report"] = bench_report(n_trials=100 if quick else 1000, n_curve_rows=100 if quick else 1000,
                                         n_boot=20 if quick else 200)
        console.print(_line("report", results["report"]))
    if "orchestration" in chosen:
        from xtra.studies.bench import bench_orchestration

        results["orchestration"] = bench_orchestration(n_trials=2 if quick else 4)
        console.print(_line("orchestration", results["orchestration"]))
    if "scaling" in chosen:
        from xtra.studies.ray.workers import bench_scaling

        results["scaling"] = bench_scaling(2, steps=10, size="tiny") if quick else bench_scaling(2)
        console.print(_line("scaling", results["scaling"]))
    if "data" in chosen:
        from xtra.benchmarks.data import bench_data

        results.update(bench_data(Path("runs/bench/data-cache"), quick=quick))
        for key in ("data_decode", "data_memory", "data_stall", "data_workers"):
            for row in results[key] if isinstance(results[key], list) else [results[key]]:
                console.print(_line(key, row))
    if "wsd" in chosen:  # samples trained by sample-budget under wsd vs cosine (plan arithmetic, no training)
        from xtra.studies.wsd_bench import bench_wsd_samples

        results["wsd"] = bench_wsd_samples()
        for row in results["wsd"]:
            console.print(_line("wsd", row))


def _faults(quick: bool, out: Path, seed: int) -> dict:
    """The fault campaign (its short size with --quick): the full size writes docs/faults-cpu.*, the
    short one beside `out`. Returns its summary (the per-study records stay in the JSON)."""
    from xtra.checkpoint import atomic_write_text
    from xtra.studies import fault_campaign, fault_checks

    command = f"xtra bench --sections faults --seed {seed}" + (" --quick" if quick else "")
    result = fault_campaign.run_campaign(seed, quick=quick, root=out.parent / "faults",
                                         log=lambda msg: console.print(f"[bold]faults[/] {msg}"))
    target = FAULTS_DOC if not quick else out.parent / "faults-quick.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps({**result, "command": command}, indent=1, default=str) + "\n")
    atomic_write_text(target.with_suffix(".md"), fault_checks.to_markdown(result, command))
    ok = fault_checks.passed(result)
    console.print(f"wrote {target} and {target.with_suffix('.md')} ({result['wall_s']:.0f} s): {result['faults']} "
                  f"faults, {result['trials']} trials, lost {result['lost']}, duplicated {result['duplicated']}"
                  + ("" if ok else f"; FAILED: {result['problems'] + result['violations']}"))
    return {k: v for k, v in result.items() if k != "segments"}


def _calibration(quick: bool, out: Path) -> list[dict]:
    """Run the calibration suite (its fast size with --quick) and write its Markdown and JSON: the default
    size to docs/calibration-cpu.*, the fast one beside `out`. The machine's load is recorded with it: on a
    shared machine the wall time is longer than on an idle one."""
    import os
    import platform

    from xtra.checkpoint import atomic_write_text
    from xtra.reports import calibration

    size = "fast" if quick else "default"
    load_before = os.getloadavg()
    result = calibration.run_suite(size, log=lambda msg: console.print(f"[bold]calibration[/] {msg}"))
    load_after = os.getloadavg()
    environment = (f"Measured on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared "
                   f"with other processes: 1-minute load average {load_before[0]:.1f} at the start, "
                   f"{load_after[0]:.1f} at the end.")
    target = CALIBRATION_DOC if not quick else out.parent / "calibration-fast.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps({**result, "environment": environment}, indent=1, default=str) + "\n")
    atomic_write_text(target.with_suffix(".md"), calibration.to_markdown(result, environment) + "\n")
    bad = calibration.failures(result)
    console.print(f"wrote {target} and {target.with_suffix('.md')} ({result['seconds']:.0f} s); "
                  + ("every ratio interval within its promise" if not bad else "NOT calibrated: " + "; ".join(bad)))
    return [{k: v for k, v in row.items() if k != "tags"} for row in result["rows"]]


def _probe_tables(probe: dict) -> dict[str, list[dict]]:
    """The probe section as one Markdown table per measurement: lrs at once and the cache, the
    linear probe's convergence, the official protocol's cost per kind, probing at checkpoints, and
    the top-1 vs samples curve."""
    tables = {"probe": [{"what": key, **probe[key]} for key in ("linear", "attentive", "linear_cache") if key in probe]}
    if "convergence" in probe:
        tables["probe_convergence"] = [probe["convergence"]]
    if "protocol" in probe:
        cost = probe["protocol"]
        rows = [{"kind": kind, "official_s": cost[kind]["official_s"], "official_top1": cost[kind]["official_top1"],
                 "official_lr": cost[kind]["official_lr"], "ours_s": cost[kind]["single_pass_s"],
                 "ours_top1": cost[kind]["single_pass_top1"],
                 "ours_epochs_tried": [run["epochs"] for run in cost[kind]["ours"]],
                 "reached": cost[kind]["reached"], "cost_ratio": cost[kind]["speedup"]}
                for kind in ("linear", "attentive") if kind in cost]
        rows.append({"kind": "both", "official_s": cost["official_s"], "ours_s": cost["single_pass_s"],
                     "cost_ratio": cost["speedup"]})
        tables["probe_protocol"] = rows
    if "checkpoints" in probe:
        tables["probe_checkpoints"] = [probe["checkpoints"]]
    if "sample_curve" in probe:
        tables["probe_sample_curve"] = probe["sample_curve"]
    return tables


def _line(section: str, row: dict) -> str:
    parts = []
    for k, v in row.items():
        if isinstance(v, float):
            v = f"{v:.3g}"
        parts.append(f"{k}={v}")
    return f"[bold]{section}[/] " + " ".join(parts)
