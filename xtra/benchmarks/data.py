"""`xtra bench --sections data`: the streaming image pipeline's figures, on generated JPEG collections.

- ``data_decode``: decode + augment images/s per loader worker (RandomResizedCrop at 32 and 256 px,
  RGB, from ImageNet-like JPEGs of about 500x375), with 1 and 2 workers (the scaling), with and
  without the reduced-scale JPEG decode (``draft``), and the evaluation transform.
- ``data_memory``: peak RSS (the trainer plus its loader workers) of the same short ``cpu-s``
  pretraining reading a 5k- and a 50k-image collection, and the growth between them.
- ``data_probe_memory``: peak RSS of a linear probe (features cached in memory, their bytes given
  apart) over every image of the same 5k and 50k collections, through the lazy splits.
- ``data_stall``: the fraction of step time a ``cpu-s`` pretraining run waits for its next batch.
- ``data_workers``: from the measured per-worker rate at 256 px, how many workers one H200 needs to
  keep ``vit-b/16`` fed (``xtra.data.workers_advice``; the GPU rate is 40% MFU of its bf16 peak, not
  measured here).

The collections are generated once under ``cache`` (``xtra.data.generate``); the 50k one is 50,000
hard links to the files of the 5k one (memory depends on the number of files listed and read, not
on their pixels). Nothing is asserted: these are measurements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from xtra import trialdir as td


def _collection(cache: Path, n: int, mean_side: int = 500) -> Path:
    root = cache / f"jpeg-{n}"
    if not (root / ".complete").exists():
        from xtra.data.generate import make_imagefolder

        make_imagefolder(root, n_classes=10, train_per_class=n // 10, val_per_class=0, mean_side=mean_side, seed=7)
        (root / ".complete").write_text("")
    return root


def _linked(cache: Path, src: Path, n: int) -> Path:
    """An image folder of ``n`` files, hard links to ``src``'s (cycled)."""
    root = cache / f"linked-{n}"
    if (root / ".complete").exists():
        return root
    files = sorted((src / "train").glob("*/*.jpg"))
    for i in range(n):
        f = files[i % len(files)]
        dst = root / "train" / f.parent.name / f"{i:07d}.jpg"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, dst)
    (root / ".complete").write_text("")
    return root


def decode_rate(folder: Path, size: int, workers: int, *, augment: bool = True, fast: bool = True,
                batch: int = 32, limit: int = 0) -> float:
    """Images/s through the real loader (``decode.BatchSet`` in ``workers`` processes), timed from
    the first batch on (worker start-up excluded)."""
    from xtra.config import DataConfig
    from xtra.data import collection, decode

    listing = collection.open_collection(f"imagefolder:{folder}").train
    n = min(len(listing), limit) if limit else len(listing)
    cfg = DataConfig(name=f"imagefolder:{folder}")
    dataset = decode.BatchSet(listing, size, 3, cfg, True, 0, augment=augment)
    dataset.fast = fast  # False: decode every pixel (what the reduced-scale JPEG decode saves)
    requests = [(np.arange(s, min(s + batch, n)), np.zeros(min(batch, n - s), dtype=np.int64),
                 np.arange(s, min(s + batch, n))) for s in range(0, n, batch)]
    it = decode.batch_loader(dataset, requests, workers, False)
    next(it)  # the first batch includes the workers' start-up
    t0, count = time.perf_counter(), 0
    for item in it:
        count += len(item["images"])
    return count / (time.perf_counter() - t0)


def _tree_memory(pid: int) -> tuple[int, int]:
    """(RSS of the process, PSS of it and all its descendants) in bytes, from /proc. PSS splits the
    pages a forked loader worker shares with the trainer between them, so the tree's sum does not
    count them twice (a sum of RSS would)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    rss = 0
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        pass
    pss, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                pss += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, ValueError, StopIteration):
            pass
    return rss, pss


_PRETRAIN = """
import json, sys
from pathlib import Path
from xtra.config import DataConfig, PretrainConfig, model_config
from xtra.pretrain import pretrain
folder, out, samples, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = DataConfig(name="imagefolder:" + folder, val_size=256, workers=workers)
cfg = PretrainConfig(samples=samples, batch_size=128, warmup_samples=128, checkpoint_every=10**9, log_every=2,
                     device="cpu")
result = pretrain(model_config("cpu-s", block_size=2), data, cfg, Path(out), seed=0)
print(json.dumps(result))
"""


def _run_watched(args: list[str]) -> tuple[subprocess.Popen, str, str, list[int]]:
    """``python -c ARGS...`` in a fresh process, sampling its peak RSS and the peak PSS of its process
    tree every 50 ms; returns the finished process, its stdout and stderr, and [peak RSS, peak PSS]."""
    proc = subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            rss, pss = _tree_memory(proc.pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate()
    stop.set()
    watcher.join()
    return proc, stdout, stderr, peak


def pretrain_run(folder: Path, out: Path, samples: int, workers: int) -> dict[str, Any]:
    """A ``cpu-s`` pretraining in a fresh process; returns its peak RSS (the trainer) and peak PSS
    (the trainer plus loader workers), its result and curve rows."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    proc, stdout, stderr, peak = _run_watched([_PRETRAIN, str(folder), str(out), str(samples), str(workers)])
    if proc.returncode != 0:
        raise RuntimeError(f"pretraining on {folder} failed: {stderr.strip().splitlines()[-1:]}")
    rows = td.read_metrics(out)
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"peak_rss": peak[0], "peak_pss_tree": peak[1], "result": result, "rows": rows}


_PROBE = """
import json, sys, torch
from xtra.config import DataConfig, ProbeConfig, model_config
from xtra.data import load_dataset
from xtra.probe import probe, random_encoder
folder, workers = sys.argv[1], int(sys.argv[2])
model = model_config("cpu-s", block_size=2)
dataset = load_dataset(DataConfig(name="imagefolder:" + folder, val_size=256, workers=workers), model.img_size,
                       model.channels)
cfg = ProbeConfig(kinds=("linear",), epochs=1, warmup_epochs=0, lrs=(1e-3,), batch_size=256, cache="memory")
result = probe(random_encoder(model, 0).eval(), dataset, cfg, seed=0)
n = len(dataset.train) + len(dataset.val) + len(dataset.test)
print(json.dumps({"images": n, "feature_cache_bytes": 4 * n * model.width, "top1": result["linear"]["test_top1"]}))
"""


def probe_memory(folder: Path, workers: int) -> dict[str, Any]:
    """A linear probe of a random ``cpu-s`` encoder on every image of ``folder`` (train, val and the
    held-out test, features cached in memory: 4 * width bytes an image, reported so it can be told
    apart), in a fresh process; its peak RSS and the PSS of it plus its loader workers."""
    t0 = time.perf_counter()
    proc, stdout, stderr, peak = _run_watched([_PROBE, str(folder), str(workers)])
    if proc.returncode != 0:
        raise RuntimeError(f"probing {folder} failed: {stderr.strip().splitlines()[-1:]}")
    return {"peak_rss": peak[0], "peak_pss_tree": peak[1], "wall_s": time.perf_counter() - t0,
            **json.loads(stdout.strip().splitlines()[-1])}


def bench_data(cache: Path, quick: bool = False) -> dict[str, list[dict[str, Any]] | dict[str, Any]]:
    from xtra.config import model_config
    from xtra.data import workers_advice
    from xtra.data.decode import resolve_workers

    cache.mkdir(parents=True, exist_ok=True)
    small = _collection(cache, 500 if quick else 5000)
    limit = 128 if quick else 512
    decode = []
    for size in (32, 256):
        one = decode_rate(small, size, 1, limit=limit)
        two = decode_rate(small, size, 2, limit=limit)
        full = decode_rate(small, size, 1, fast=False, limit=limit)
        evaluation = decode_rate(small, size, 1, augment=False, limit=limit)
        decode.append({"img_size": size, "load_avg_1min": round(os.getloadavg()[0], 1),
                       "per_worker_images_per_s": one, "two_workers_images_per_s": two,
                       "scaling_1_to_2": two / one, "full_decode_images_per_s": full, "draft_speedup": one / full,
                       "eval_images_per_s": evaluation, "images": limit})
    rss = []
    samples = 256 if quick else 1024
    workers = resolve_workers(-1)
    for n in ((500, 5000) if quick else (5000, 50000)):
        folder = small if n == len(list((small / "train").glob("*/*.jpg"))) else _linked(cache, small, n)
        run = pretrain_run(folder, cache / f"run-{n}", samples, workers)
        rss.append({"images": n, "peak_rss_mb": run["peak_rss"] / 2**20,
                    "peak_pss_with_workers_mb": run["peak_pss_tree"] / 2**20, "samples": samples, "workers": workers})
    a, b = rss
    rss.append({"images": f"{b['images']} vs {a['images']}", "peak_rss_mb": b["peak_rss_mb"] - a["peak_rss_mb"],
                "peak_pss_with_workers_mb": b["peak_pss_with_workers_mb"] - a["peak_pss_with_workers_mb"],
                "growth_rss": b["peak_rss_mb"] / a["peak_rss_mb"] - 1,
                "growth_pss_with_workers": b["peak_pss_with_workers_mb"] / a["peak_pss_with_workers_mb"] - 1,
                "samples": samples, "workers": workers})
    probing = []
    for n in ((500, 5000) if quick else (5000, 50000)):
        folder = small if n == len(list((small / "train").glob("*/*.jpg"))) else _linked(cache, small, n)
        run = probe_memory(folder, workers)
        probing.append({"images": run["images"], "peak_rss_mb": run["peak_rss"] / 2**20,
                        "peak_pss_with_workers_mb": run["peak_pss_tree"] / 2**20,
                        "feature_cache_mb": run["feature_cache_bytes"] / 2**20, "wall_s": run["wall_s"],
                        "workers": workers})
    a, b = probing
    probing.append({"images": f"{b['images']} vs {a['images']}", "peak_rss_mb": b["peak_rss_mb"] - a["peak_rss_mb"],
                    "peak_pss_with_workers_mb": b["peak_pss_with_workers_mb"] - a["peak_pss_with_workers_mb"],
                    "feature_cache_mb": b["feature_cache_mb"] - a["feature_cache_mb"],
                    "growth_rss": b["peak_rss_mb"] / a["peak_rss_mb"] - 1, "workers": workers,
                    # what the old in-memory splits would have added: float32 pixels (cpu-s: 1 x 32 x 32)
                    "decoded_pixels_mb_avoided": (b["images"] - a["images"]) * 4 * 32 * 32 / 2**20})
    stall_samples = 512 if quick else 3072
    run = pretrain_run(small, cache / "run-stall", stall_samples, workers)
    rows = run["rows"]
    spans = np.diff([0.0] + [r["wall_s"] for r in rows])  # each log window's duration
    steady = slice(1, None) if len(rows) > 1 else slice(None)  # the first window includes worker start-up
    stall = {"size": "cpu-s", "img_size": 32, "load_avg_1min": round(os.getloadavg()[0], 1),
             "samples": stall_samples, "workers": workers,
             "images_per_s": run["result"]["images_per_s"],
             "data_stall": float(np.average([r["data_stall"] for r in rows][steady], weights=spans[steady])),
             "data_stall_first_window": rows[0]["data_stall"]}
    vit = model_config("vit-b/16", block_size=4)
    advice = workers_advice(vit, decode[1]["per_worker_images_per_s"])
    return {"data_decode": decode, "data_memory": rss, "data_probe_memory": probing, "data_stall": stall,
            "data_workers": {"model": "vit-b/16 k=4", "img_size": 256, **{k: v for k, v in advice.items()}}}
