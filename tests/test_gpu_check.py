"""scripts/gpu-check's CPU rehearsal (--dry-run): every section runs, on the core alone, into one JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402

SECTIONS = ["parity", "step_vit_b16", "step_vit_h14", "flex_vs_sdpa", "trial"]
# The rehearsal runs with these made unimportable, as they are on the lent GPU machine
BLOCKED = ("ray", "optuna", "polars", "plotly", "typer", "rich", "pyarrow", "pandas", "scipy", "sklearn", "PIL",
           "tensorboardX", "boto3", "xformers")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "gpu-check.json"
    runner = (f"import runpy, sys\nsys.modules.update(dict.fromkeys({BLOCKED!r}))\n"
              f"sys.argv = ['gpu_check.py', '--dry-run', {str(out)!r}]\n"
              "runpy.run_path('scripts/gpu_check.py', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", runner], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), json.loads(result.stdout)


@pytest.mark.slow
def test_the_dry_run_records_every_section_without_the_packages_the_gpu_machine_lacks(dry_run):
    report, printed = dry_run
    assert report["mode"] == "dry-run" and report["device"] == "cpu"
    assert list(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"), section.get("traceback"))
        assert section["budget_s"] > 0 and section["wall_s"] >= 0
    assert printed["sections"] == {name: "ok" for name in SECTIONS}
    assert not set(report["modules"]) & set(gpu_check.NOT_ON_THE_GPU_MACHINE)
    assert report["xformers_wheel"]["fits_64_mib_carry"] is True
    assert set(report["goals"]) == {"vit_b16_best_mfu", "vit_b16_mfu_at_least_40pct", "flex_faster_than_sdpa_at_k4",
                                    "parity_within_tolerance"}
    assert report["goals"]["vit_b16_best_mfu"]["backend"] == "sdpa"  # auto resolves to sdpa on the CPU


@pytest.mark.slow
def test_parity_covers_every_backend_block_size_and_precision(dry_run):
    rows = dry_run[0]["sections"]["parity"]["rows"]
    assert {(r["backend"], r["block_size"], r["precision"]) for r in rows} == \
        {(b, k, p) for b in ("sdpa", "flex", "xformers") for k in (1, 2, 4) for p in ("fp32", "bf16")}
    sdpa = [r for r in rows if r["backend"] == "sdpa"]
    assert all(r["ok"] and r["compared"] == "loss and gradients" and r["grad_cosine"] > 0.99 for r in sdpa), sdpa
    flex = [r for r in rows if r["backend"] == "flex"]  # the CPU has flex's forward only
    assert all(r["ok"] and r["compared"] == "loss" for r in flex), flex
    assert all(r["status"].startswith("unavailable") and "ok" not in r for r in rows if r["backend"] == "xformers")
    assert dry_run[0]["goals"]["parity_within_tolerance"] is True


@pytest.mark.slow
def test_steps_name_the_papers_batch_per_gpu_and_measure_mfu(dry_run):
    paper = tomllib.loads((ROOT / "studies" / "_presets.toml").read_text())["presets"]["paper"]
    per_gpu = paper["pretrain.batch_size"] // paper["resources"]["gpus_per_trial"]
    for name, stands_for in (("step_vit_b16", "vit-b/16"), ("step_vit_h14", "vit-h/14")):
        section = dry_run[0]["sections"][name]
        assert section["stands_for"] == stands_for and section["paper_batch_per_gpu"] == per_gpu
        assert section["micro_batch"] == 4 and section["fits_paper_batch"] is False  # the rehearsal's tiny batch
        assert section["rows"] and all(r["mfu"] > 0 and r["images_per_s"] > 0 for r in section["rows"])
        assert [r["asked"] for r in section["rows"]] == ["auto"]  # sdpa is what auto resolves to here: run once


@pytest.mark.slow
def test_flex_vs_sdpa_and_the_trial(dry_run):
    sections = dry_run[0]["sections"]
    rows = sections["flex_vs_sdpa"]["rows"]
    assert [r["block_size"] for r in rows] == [1, 2, 4]
    assert all(r["sdpa_ms"] > 0 and r["flex_ms"] > 0 and r["flex_speedup_vs_sdpa"] > 0 for r in rows)
    skipped = [r["skipped_fraction"] for r in rows]  # larger blocks leave less of the square to skip
    assert skipped == sorted(skipped, reverse=True) and 0 < skipped[-1] < skipped[0] < 0.5
    trial = sections["trial"]
    assert trial["trial_status"] == "finished"
    assert trial["samples_seen"] == gpu_check.PLANS["dry-run"]["trial"]["samples"]
    assert 0 <= trial["linear_top1"] <= 1 and 0 <= trial["attentive_top1"] <= 1


def test_the_script_imports_with_the_gpu_machines_missing_packages_unimportable():
    runner = (f"import runpy, sys\nsys.modules.update(dict.fromkeys({BLOCKED!r}))\n"
              "runpy.run_path('scripts/gpu_check.py', run_name='not_main')\n"
              "import json\nprint(json.dumps(sorted({n.split('.')[0] for n, m in list(sys.modules.items()) if m})))\n")
    result = subprocess.run([sys.executable, "-c", runner], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert {"torch", "xtra"} <= loaded and not loaded & set(gpu_check.NOT_ON_THE_GPU_MACHINE)


def test_the_gpu_plan_fits_in_eight_minutes_with_room_to_start():
    budgets = gpu_check.PLANS["cuda"]["budget_s"]
    assert list(budgets) == SECTIONS and list(gpu_check.PLANS["dry-run"]["budget_s"]) == SECTIONS
    assert sum(budgets.values()) <= 8 * 60 - 60  # a minute for imports, the peak measurement and writing


def test_without_a_gpu_the_real_run_says_so_in_its_json(tmp_path):
    if subprocess.run([sys.executable, "-c", "import torch; assert not torch.cuda.is_available()"]).returncode:
        pytest.skip("this machine has a GPU: the real run is scripts/gpu-check itself")
    out = tmp_path / "gpu-check.json"
    result = subprocess.run(["bash", "scripts/gpu-check", str(out)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 1 and "no CUDA device visible" in result.stderr
    assert json.loads(out.read_text())["error"].startswith("no CUDA device visible")
