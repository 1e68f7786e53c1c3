"""Benchmarks measured side by side in one run; figures are ratios, never asserted in tests.

Sections: `pretrain` (step throughput, achieved FLOP/s and MFU against a matmul peak measured in
the same run), `attention` (each backend vs `math`), and, wired from their own modules, `probe`,
`report` and `orchestration`. Only torch is imported at module level, so the GPU check script can
reuse it on a stock PyTorch image.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from xtra.attention import attend, backend_status, resolve_backend, skipped_fraction
from xtra.config import model_config
from xtra.costs import flops_per_image
from xtra.model import XTRA
from xtra.pretrain import make_optimizer, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds per call after warmup."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def matmul_peak(device: torch.device, n: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """The device's achievable matmul FLOP/s: fp32 on CPU, bf16 on GPU."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n or (8192 if device.type == "cuda" else 1536)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, device, repeats)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "flops_per_s": 2 * n**3 / seconds}


def bench_pretrain_step(size: str, block_size: int, backend: str, device: torch.device, batch: int,
                        repeats: int = 3, peak: float | None = None, compile: bool = False,
                        **overrides: Any) -> dict[str, Any]:
    from xtra.config import PretrainConfig

    cfg = model_config(size, block_size=block_size, attention=backend, **overrides)
    torch.manual_seed(0)
    model = XTRA(cfg).to(device)
    pcfg = PretrainConfig(batch_size=batch, device=device.type)
    opt = make_optimizer(model, pcfg)
    run = torch.compile(model) if compile else model
    images = torch.randn(batch, cfg.channels, cfg.img_size, cfg.img_size, device=device)
    seconds = timed(lambda: train_step(run, opt, images, 0, 1e-4, pcfg), device, repeats, warmup=2 if compile else 1)
    flops = flops_per_image(cfg) * batch / seconds
    row = {"size": size, "block_size": block_size, "backend": resolve_backend(backend, device),
           "compile": compile, "batch": batch, "step_s": seconds, "images_per_s": batch / seconds,
           "flops_per_s": flops}
    if peak:
        row["mfu"] = flops / peak
    return row


def bench_attention(device: torch.device, tokens: int = 256, heads: int = 6, head_dim: int = 64, batch: int = 32,
                    block_tokens: tuple[int, ...] = (1, 4, 16), repeats: int = 5) -> list[dict[str, Any]]:
    status = backend_status(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for bt in block_tokens:
        q, k, v = (torch.randn(batch, heads, tokens, head_dim, device=device, dtype=dtype, requires_grad=True)
                   for _ in range(3))

        def fwd(name, q=q, k=k, v=v, bt=bt):
            with torch.no_grad():
                attend(q, k, v, bt, name)

        def fwd_bwd(name, q=q, k=k, v=v, bt=bt):
            attend(q, k, v, bt, name).sum().backward()

        base_fwd = timed(lambda: fwd("math"), device, repeats)
        base_fwd_bwd = timed(lambda: fwd_bwd("math"), device, repeats)
        for name in ("math", "sdpa", "flex", "xformers"):
            if not (status[name].startswith("ok") or status[name].startswith("forward only")):
                continue
            row = {"tokens": tokens, "block_tokens": bt, "backend": name,
                   "skipped_fraction": skipped_fraction(tokens, bt) if name == "flex" else 0.0}
            try:
                row["fwd_ms"] = timed(lambda n=name: fwd(n), device, repeats) * 1e3
                row["fwd_speedup_vs_math"] = base_fwd * 1e3 / row["fwd_ms"]
                if status[name].startswith("ok"):
                    row["fwd_bwd_ms"] = timed(lambda n=name: fwd_bwd(n), device, repeats) * 1e3
                    row["fwd_bwd_speedup_vs_math"] = base_fwd_bwd * 1e3 / row["fwd_bwd_ms"]
            except Exception as err:  # noqa: BLE001 - a backend that fails here is reported, not fatal
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
            rows.append(row)
    return rows


def environment() -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def to_markdown(results: dict[str, Any]) -> str:
    """The JSON figures as Markdown tables (for the README and reviews)."""
    lines = [f"# xtra bench ({results['environment'].get('gpu', 'cpu')}, torch {results['environment']['torch']}, "
             f"{results['environment']['threads']} threads)", ""]
    for section, rows in results.items():
        if section == "environment" or not rows:
            continue
        if isinstance(rows, dict):
            rows = [rows]
        keys = list(dict.fromkeys(k for row in rows for k in row))
        lines += [f"## {section}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in rows:
            lines.append("| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.3f}"
    return "" if v is None else str(v)


def compare(current: dict[str, Any], previous: dict[str, Any]) -> list[dict[str, Any]]:
    """Ratios current / previous for every numeric figure present in both (matched by row identity)."""
    out = []
    for section, rows in current.items():
        if section == "environment" or section not in previous:
            continue
        rows = rows if isinstance(rows, list) else [rows]
        prev_rows = previous[section] if isinstance(previous[section], list) else [previous[section]]
        for row in rows:
            ident = {k: v for k, v in row.items() if not isinstance(v, float)}
            match = next((p for p in prev_rows if {k: p.get(k) for k in ident} == ident), None)
            if match is None:
                continue
            for key, value in row.items():
                if isinstance(value, float) and isinstance(match.get(key), float) and match[key]:
                    out.append({"section": section, **ident, "figure": key, "ratio": value / match[key]})
    return out


def save(results: dict[str, Any], path) -> None:
    from xtra.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(results, indent=2, default=str) + "\n")
