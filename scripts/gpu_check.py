"""GPU check: one prepared run on a single NVIDIA GPU, everything into one JSON.

Made for a lent machine that has its own Python with torch (CUDA), Triton, numpy and pytest, and
nothing else: no Ray, Optuna, polars, plotly, Typer or rich, no network. It runs the core straight
from the checkout (`xtra.attention`, `xtra.model`, `xtra.pretrain`, `xtra.trial`; tests/test_gpu_check.py
checks that the whole run imports none of those packages). Sections, each under its own time budget
and recorded even when another fails:

  parity         the model's loss and gradients on CUDA, for each attention backend (sdpa masked,
                 flex block-sparse, xformers when it imports) and k = 1, 2, 4, against the same
                 model on the CPU (fp32 `math`): fp32 (TF32 off) and bf16 autocast
  step_vit_b16   a bf16 pretraining step of `vit-b/16` at the paper preset's batch per GPU (or the
  step_vit_h14   largest power-of-two micro-batch below it that fits, without accumulation; the JSON
                 says which): images/s, MFU against a bf16 matmul peak measured in the same run, peak memory
  flex_vs_sdpa   attention alone at vit-b/16's shape, flex block-sparse vs dense masked SDPA, k = 1, 2, 4
  trial          a tiny pretrain-then-probe through `run_trial` on procedural data

`--dry-run` runs every section on the CPU at tiny sizes (seconds): the same code paths, for the tests.
Writes the JSON to the path given, else $OUT/gpu-check.json, else ./gpu-check.json, after every section.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import importlib.metadata
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from xtra.attention import attend, backend_status, resolve_backend, skipped_fraction  # noqa: E402
from xtra.benchmarks import environment, matmul_peak, timed  # noqa: E402
from xtra.config import PretrainConfig, TrialConfig, model_config  # noqa: E402
from xtra.costs import flops_per_image  # noqa: E402
from xtra.model import XTRA  # noqa: E402
from xtra.overrides import override  # noqa: E402
from xtra.pretrain import make_optimizer, train_step  # noqa: E402
from xtra.trial import run_trial  # noqa: E402

PRESETS = ROOT / "studies" / "_presets.toml"
# What the lent machine is expected not to have; the run must not need any of them.
NOT_ON_THE_GPU_MACHINE = ("ray", "optuna", "polars", "plotly", "typer", "rich", "pyarrow", "pandas", "scipy",
                          "sklearn", "PIL", "tensorboardX", "boto3")
# xformers 0.0.35's Linux wheel on PyPI (xformers-0.0.35-py39-none-manylinux_2_28_x86_64.whl): 3,264,751
# bytes, within the 64 MiB a lent machine takes in; scripts/gpu-check installs it from .gpu-wheels/.
XFORMERS_WHEEL_BYTES = 3_264_751
BACKENDS = ("sdpa", "flex", "xformers")
BLOCK_SIZES = (1, 2, 4)
PARITY_ORDER = (4, 1, 2)  # the paper's k first: a parity section cut short by its budget has it
TINY = {"img_size": 32, "patch_size": 4, "width": 32, "depth": 2, "num_heads": 2, "proj_hidden": 64,
        "pred_width": 32, "pred_depth": 1, "pred_num_heads": 2, "head_hidden": 64}
# Sizes as data: what each section runs on a GPU and in the CPU dry run, and the seconds it may take
# (the whole GPU run stays under 8 minutes: 380 s of budgets plus start-up and the peak measurement).
PLANS: dict[str, dict[str, Any]] = {
    "cuda": {
        "budget_s": {"parity": 70, "step_vit_b16": 100, "step_vit_h14": 90, "flex_vs_sdpa": 50, "trial": 70},
        "parity": {"size": "vit-b/16", "overrides": {}, "batch": 2},
        "steps": {"step_vit_b16": ("vit-b/16", ("auto", "sdpa", "flex")),
                  "step_vit_h14": ("vit-h/14", ("auto", "sdpa"))},
        "step_overrides": {}, "step_batch": None, "step_repeats": 5,
        "attention": {"batch": 64, "heads": 12, "head_dim": 64, "tokens": (256, 1024), "repeats": 10},
        "trial": {"model": "cpu-m", "samples": 200 * 128, "batch": 128, "synthetic_size": 8192, "probe_epochs": 3},
    },
    "dry-run": {
        # budgets only as a safety net here: a busy CPU must not turn a rehearsal red
        "budget_s": {"parity": 300, "step_vit_b16": 300, "step_vit_h14": 300, "flex_vs_sdpa": 300, "trial": 300},
        "parity": {"size": "tiny", "overrides": TINY, "batch": 2},
        "steps": {"step_vit_b16": ("tiny", ("auto", "sdpa")), "step_vit_h14": ("tiny", ("auto",))},
        "step_overrides": TINY, "step_batch": 4, "step_repeats": 2,
        "attention": {"batch": 2, "heads": 2, "head_dim": 16, "tokens": (64,), "repeats": 2},
        "trial": {"model": "tiny", "samples": 128, "batch": 32, "synthetic_size": 256, "probe_epochs": 1},
    },
}
STANDS_FOR = {"step_vit_b16": "vit-b/16", "step_vit_h14": "vit-h/14"}
# bf16 keeps 8 bits of mantissa: a loss within 2% and gradients pointing the same way (cosine) is parity
BF16_LOSS_RTOL, BF16_GRAD_COS = 2e-2, 0.99
FP32_LOSS_RTOL, FP32_GRAD_COS = 1e-4, 0.9999


class OverBudget(BaseException):
    """A BaseException, so that no `except Exception` on the way (torch.compile has several) swallows it."""


@contextmanager
def budget(seconds: float):
    """Raise OverBudget in this (main) thread once `seconds` have passed; a kernel already running
    finishes first, so a budget is a limit on Python-level progress, not a hard kill."""
    def expire(signum, frame):
        raise OverBudget(f"over its budget of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def paper_batch_per_gpu() -> int:
    """The paper preset's pretraining batch over its GPUs per trial (the batch each GPU steps on)."""
    paper = tomllib.loads(PRESETS.read_text())["presets"]["paper"]
    return int(paper["pretrain.batch_size"]) // int(paper.get("resources", {}).get("gpus_per_trial", 1))


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"


# ---------------------------------------------------------------------------------------------
# parity


def loss_and_grads(model: XTRA, images: torch.Tensor, bf16: bool) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(images)
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return loss.item(), grads.cpu()


def tf32(allowed: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def parity(device: torch.device, plan: dict, rows: list) -> None:
    """Each backend on `device` against the CPU's fp32 `math`, same weights and images. A backend
    with no backward on the device (flex on the CPU) is compared on the loss alone."""
    status = backend_status(device)
    spec = plan["parity"]
    for k in PARITY_ORDER:
        sizes = {**spec["overrides"], "block_size": k, "attention": "math", "drop_path": 0.0}
        cfg = model_config(spec["size"], **sizes)
        torch.manual_seed(0)
        reference = XTRA(cfg).train()
        images = torch.randn(spec["batch"], cfg.channels, cfg.img_size, cfg.img_size)
        ref_loss, ref_grads = loss_and_grads(reference, images, bf16=False)
        for backend in BACKENDS:
            for precision in ("fp32", "bf16"):
                row = {"backend": backend, "block_size": k, "precision": precision, "size": spec["size"],
                       "status": status[backend]}
                rows.append(row)
                if not status[backend].startswith(("ok", "forward only")):
                    continue
                forward_only = status[backend].startswith("forward only")
                bf16 = precision == "bf16"
                rtol, min_cos = (BF16_LOSS_RTOL, BF16_GRAD_COS) if bf16 else (FP32_LOSS_RTOL, FP32_GRAD_COS)
                try:
                    tf32(False)  # fp32 parity means fp32 matmuls and convolutions
                    with torch.device(device):
                        model = XTRA(dataclasses.replace(cfg, attention=backend)).train()
                    model.load_state_dict(reference.state_dict())
                    if forward_only:
                        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                            loss = model(images.to(device)).item()
                    else:
                        loss, grads = loss_and_grads(model, images.to(device), bf16=bf16)
                        row.update(grad_cosine=torch.nn.functional.cosine_similarity(grads, ref_grads, dim=0).item(),
                                   grad_max_abs_err=(grads - ref_grads).abs().max().item())
                    rel = abs(loss - ref_loss) / abs(ref_loss)
                    row.update(loss=loss, reference_loss=ref_loss, loss_rel_err=rel, compared="loss" if forward_only
                               else "loss and gradients",
                               ok=rel < rtol and (forward_only or row["grad_cosine"] > min_cos))
                except OverBudget:
                    raise
                except Exception as err:  # noqa: BLE001 - a backend that fails is a finding, recorded
                    row.update(error=_error(err), ok=False)
                finally:
                    tf32(True)


# ---------------------------------------------------------------------------------------------
# pretraining steps


def step_rows(size: str, overrides: dict, backend: str, device: torch.device, batch: int, repeats: int,
              peak: float, tried: list) -> tuple[dict, int]:
    """One backend's step at `batch`, halved on out-of-memory until it fits; (row, batch that fit)."""
    cfg = model_config(size, **{**overrides, "attention": backend})
    torch.manual_seed(0)
    with torch.device(device):  # built on the device: a ViT-H initialised on the CPU takes seconds
        model = XTRA(cfg).train()
    while True:
        pcfg = PretrainConfig(batch_size=batch, device=device.type)
        optimizer = make_optimizer(model, pcfg)
        try:
            images = torch.randn(batch, cfg.channels, cfg.img_size, cfg.img_size, device=device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = timed(functools.partial(train_step, model, optimizer, images, 0, 1e-4, pcfg), device, repeats)
            tried.append({"backend": backend, "batch": batch, "fits": True})
            break
        except torch.cuda.OutOfMemoryError:
            tried.append({"backend": backend, "batch": batch, "fits": False})
            if batch == 1:
                raise
        images = optimizer = None  # out of the except block: its traceback no longer holds the tensors
        model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
        batch //= 2
    flops = flops_per_image(cfg) * batch / seconds
    row = {"backend": resolve_backend(backend, device), "asked": backend, "block_size": cfg.block_size,
           "batch": batch, "step_s": seconds, "images_per_s": batch / seconds, "flops_per_s": flops,
           "mfu": flops / peak, "precision": "bf16 autocast" if device.type == "cuda" else "fp32"}
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row, batch


def steps(name: str, device: torch.device, plan: dict, peak: float, rows: list, notes: dict) -> None:
    """The paper's batch per GPU when it fits; else the largest power-of-two fraction of it that does,
    without accumulation (the step measured is one micro-batch's forward, backward and AdamW step)."""
    size, backends = plan["steps"][name]
    paper = paper_batch_per_gpu()
    notes.update(size=size, stands_for=STANDS_FOR[name], paper_batch_per_gpu=paper, batches_tried=[],
                 paper_batch_source=f"{PRESETS.name} [presets.paper]: pretrain.batch_size / gpus_per_trial")
    batch = plan["step_batch"] or paper
    # `auto` first (what a study runs), then each other backend it did not resolve to
    backends = [b for i, b in enumerate(backends)
                if resolve_backend(b, device) not in {resolve_backend(a, device) for a in backends[:i]}]
    for backend in backends:  # each starts at the batch the previous one fitted
        try:
            row, batch = step_rows(size, plan["step_overrides"], backend, device, batch, plan["step_repeats"], peak,
                                   notes["batches_tried"])
            rows.append(row)
        except OverBudget:
            raise
        except Exception as err:  # noqa: BLE001 - one backend's failure is recorded, the next one runs
            rows.append({"asked": backend, "batch": batch, "error": _error(err)})
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    notes["micro_batch"] = batch
    notes["fits_paper_batch"] = batch == paper


# ---------------------------------------------------------------------------------------------
# flex block-sparse vs dense masked SDPA


def flex_vs_sdpa(device: torch.device, plan: dict, rows: list) -> None:
    spec = plan["attention"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    grad = device.type == "cuda"  # flex has no backward on the CPU: the dry run times forwards
    for tokens in spec["tokens"]:
        grid = int(tokens**0.5)
        for k in BLOCK_SIZES:
            row = {"tokens": tokens, "block_size": k, "block_tokens": k * k, "dtype": str(dtype).replace("torch.", ""),
                   "timed": "forward+backward" if grad else "forward",
                   "skipped_fraction": skipped_fraction(tokens, k * k)}
            rows.append(row)
            if grid % k:
                row["status"] = f"skipped: a {grid}x{grid} grid does not split into {k}x{k} blocks"
                continue
            q, kk, v = (torch.randn(spec["batch"], spec["heads"], tokens, spec["head_dim"], device=device,
                                    dtype=dtype, requires_grad=grad) for _ in range(3))

            def run(backend, q=q, kk=kk, v=v, bt=k * k):
                if grad:
                    attend(q, kk, v, bt, backend).sum().backward()
                else:
                    with torch.no_grad():
                        attend(q, kk, v, bt, backend)

            for backend in ("sdpa", "flex"):
                try:
                    row[f"{backend}_ms"] = timed(lambda b=backend: run(b), device, spec["repeats"], warmup=2) * 1e3
                except OverBudget:
                    raise
                except Exception as err:  # noqa: BLE001
                    row[f"{backend}_error"] = _error(err)
            if "sdpa_ms" in row and "flex_ms" in row:
                row["flex_speedup_vs_sdpa"] = row["sdpa_ms"] / row["flex_ms"]


# ---------------------------------------------------------------------------------------------
# a tiny trial through run_trial


def trial(device: torch.device, plan: dict, out_dir: Path) -> dict:
    spec = plan["trial"]
    sizes = {f"model.{key}": value for key, value in
             (TINY if spec["model"] == "tiny" else dataclasses.asdict(model_config(spec["model"]))).items()
             if key in TINY}
    cfg = override(TrialConfig(), {
        **sizes, "model.block_size": 2, "data.name": "synthetic", "data.synthetic_size": spec["synthetic_size"],
        "pretrain.samples": spec["samples"], "pretrain.batch_size": spec["batch"],
        "pretrain.warmup_samples": spec["batch"], "pretrain.checkpoint_every": spec["samples"],
        "pretrain.device": device.type, "probe.epochs": spec["probe_epochs"], "probe.warmup_epochs": 0,
        "probe.lrs": [1e-3, 1e-2], "probe.batch_size": 64})
    run_dir = out_dir / "gpu-check-trial" / cfg.config_hash()
    t0 = time.perf_counter()
    row = run_trial(cfg, run_dir)
    return {"config_hash": cfg.config_hash(), "model": spec["model"], "samples_seen": row["samples_seen"],
            "train_loss": row["train_loss"], "val_loss": row["val_loss"], "linear_top1": row["linear_top1"],
            "attentive_top1": row["attentive_top1"], "images_per_s": row["images_per_s"],
            "attention_backend": row["attention_backend"], "device": row["device"], "trial_status": row["status"],
            "wall_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------


def goals(report: dict) -> dict:
    """The issue's goals, read off the sections (None where a section gave nothing to judge)."""
    sections = report["sections"]
    b16 = sorted((r for r in sections["step_vit_b16"].get("rows", []) if "mfu" in r), key=lambda r: -r["mfu"])
    k4 = [r for r in sections["flex_vs_sdpa"].get("rows", []) if r["block_size"] == 4 and "flex_speedup_vs_sdpa" in r]
    checked = [r for r in sections["parity"].get("rows", []) if "ok" in r]
    return {"vit_b16_best_mfu": {"mfu": b16[0]["mfu"], "backend": b16[0]["backend"]} if b16 else None,
            "vit_b16_mfu_at_least_40pct": (b16[0]["mfu"] >= 0.40) if b16 else None,
            "flex_faster_than_sdpa_at_k4": all(r["flex_speedup_vs_sdpa"] > 1 for r in k4) if k4 else None,
            "parity_within_tolerance": all(r["ok"] for r in checked) if checked else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path,
                        default=Path(os.environ.get("OUT", ".")) / "gpu-check.json")
    parser.add_argument("--dry-run", action="store_true", help="every section on the CPU at tiny sizes (seconds)")
    args = parser.parse_args(argv)
    mode = "dry-run" if args.dry_run else "cuda"
    plan = PLANS[mode]
    report: dict[str, Any] = {"mode": mode, "environment": environment(), "sections": {}}
    args.output.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        loaded = [name for name, module in list(sys.modules.items()) if module is not None]  # None: blocked
        report["modules"] = sorted({name.split(".")[0] for name in loaded if not name.startswith("_")})
        args.output.write_text(json.dumps(report, indent=2, default=str))

    if mode == "cuda" and not torch.cuda.is_available():
        report["error"] = "no CUDA device visible (use --dry-run for the CPU rehearsal)"
        save()
        print(report["error"], file=sys.stderr)
        return 1
    device = torch.device("cuda" if mode == "cuda" else "cpu")
    report["device"] = torch.cuda.get_device_name(0) if mode == "cuda" else "cpu"
    report["backends"] = backend_status(device)
    report["xformers_wheel"] = {"bytes": XFORMERS_WHEEL_BYTES, "fits_64_mib_carry": XFORMERS_WHEEL_BYTES < 64 * 2**20}
    if mode == "cuda":
        tf32(True)
        report["cuda"] = torch.version.cuda
        try:
            report["triton"] = importlib.metadata.version("triton")
        except importlib.metadata.PackageNotFoundError:
            report["triton"] = None
        report["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        # flex recompiles per block size, dtype and shape: past dynamo's default limit (8) it would
        # fall back to eager flex, which materializes the scores and would time the wrong kernel
        from torch import _dynamo

        for limit in ("cache_size_limit", "recompile_limit"):
            if hasattr(_dynamo.config, limit):
                setattr(_dynamo.config, limit, 64)
    report["peak"] = matmul_peak(device, n=None if mode == "cuda" else 256, repeats=3)
    peak = report["peak"]["flops_per_s"]
    # the trial's checkpoints stay out of the output folder (on a lent machine, what is there travels back)
    out_dir = Path(tempfile.mkdtemp(prefix="gpu-check-"))

    sections: dict[str, Callable[[list, dict], Any]] = {
        "parity": lambda rows, notes: parity(device, plan, rows),
        "step_vit_b16": lambda rows, notes: steps("step_vit_b16", device, plan, peak, rows, notes),
        "step_vit_h14": lambda rows, notes: steps("step_vit_h14", device, plan, peak, rows, notes),
        "flex_vs_sdpa": lambda rows, notes: flex_vs_sdpa(device, plan, rows),
        "trial": lambda rows, notes: notes.update(trial(device, plan, out_dir)),
    }
    for name, run in sections.items():
        rows: list = []
        notes: dict = {}
        seconds = plan["budget_s"][name]
        section = report["sections"][name] = {"budget_s": seconds}
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            with budget(seconds):
                run(rows, notes)
            section["status"] = "ok"
        except OverBudget as err:  # what it measured before the budget ran out is kept
            section.update(status="over budget", error=str(err))
        except Exception as err:  # noqa: BLE001 - record and go on to the next section
            section.update(status="failed", error=_error(err), traceback=traceback.format_exc()[-3000:])
        section["wall_s"], section["cpu_s"] = time.perf_counter() - t0, time.process_time() - cpu0
        section.update(notes)
        if rows:
            section["rows"] = rows
        if mode == "cuda":
            torch.cuda.empty_cache()
        save()
        print(f"{name}: {section['status']} in {section['wall_s']:.1f} s", file=sys.stderr)
    shutil.rmtree(out_dir, ignore_errors=True)
    report["goals"] = goals(report)
    save()
    print(json.dumps({"output": str(args.output), "goals": report["goals"],
                      "sections": {n: s["status"] for n, s in report["sections"].items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
