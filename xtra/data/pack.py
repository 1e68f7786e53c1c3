"""`xtra data pack` and `xtra data check`: ImageFolder -> WebDataset shards, and a collection's health.

Pack writes ``OUT/train-000000.tar ...`` (and ``val-*.tar`` for a train/ + val/ folder) in the
listing's order (sorted classes, sorted files), ``shard_size`` samples per shard, each sample the
WebDataset members ``<key>.<ext>`` (the image), ``<key>.cls`` (its label) and ``<key>.name`` (its
path in the folder). Without ``shorter_side`` the original bytes are copied; with it, images whose
shorter side is larger are resized once (bicubic, antialiased) and re-encoded as JPEG quality 95,
as large-scale trainers prepare ImageNet. Every shard is written to ``.part`` and renamed when
complete, and ``OUT/.pack-progress.json`` records each finished shard's size and sha256, so a
killed pack resumes where it stopped (finished shards are checked, not rewritten). The manifest
(``manifest.json``, written last, atomically) holds the settings, classes, per-split counts and
class counts, every shard's name, count, size and sha256 (its checksums are the packed collection's
fingerprint), and per split an index file (``train-index.npy``: each sample's shard, byte offset, size,
label and key), so a reader of the pack, on S3 above all, never scans the tar headers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from xtra.data import collection as col
from xtra.fileio import atomic_write_bytes, atomic_write_text

FORMAT = "xtra-wds"
VERSION = 1
PROGRESS = ".pack-progress.json"
Progress = Callable[[str, int, int], None]  # (what, done, total)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _resized(data: bytes, shorter_side: int) -> tuple[bytes, str] | None:
    """JPEG bytes of the image with its shorter side at most ``shorter_side``, or None to copy as is."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
        if min(w, h) <= shorter_side and im.format == "JPEG" and im.mode in ("RGB", "L"):
            return None
        im = im.convert("L" if im.mode in ("L", "I;16", "I", "1") else "RGB")
        if min(w, h) > shorter_side:
            s = shorter_side / min(w, h)
            im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=95)
        return out.getvalue(), "jpg"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same input gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def _write_shard(args: tuple) -> dict[str, Any]:
    """One shard (run in a worker process): returns its manifest entry."""
    out, name, split, base, paths, labels, start, shorter_side, skip_bad = args
    part = Path(out) / f"{name}.part"
    classes: Counter = Counter()
    bad: list[str] = []
    count = 0
    with tarfile.open(part, "w", format=tarfile.USTAR_FORMAT) as tar:
        for j, (rel, label) in enumerate(zip(paths, labels)):
            path = os.path.join(base, rel)
            with open(path, "rb") as f:
                data = f.read()
            ext = os.path.splitext(rel)[1].lower().lstrip(".")
            if shorter_side:
                try:
                    got = _resized(data, shorter_side)
                except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
                    message = f"{path}: cannot read image ({type(e).__name__}: {e})".replace("\n", " ")
                    if not skip_bad:
                        part.unlink(missing_ok=True)
                        return {"error": message + " (pack with --skip-bad to leave it out)"}
                    bad.append(message)
                    continue
                if got is not None:
                    data, ext = got
            key = f"{split}_{start + j:08d}"
            _add(tar, f"{key}.{ext}", data)
            _add(tar, f"{key}.cls", str(int(label)).encode())
            _add(tar, f"{key}.name", rel.encode())
            classes[int(label)] += 1
            count += 1
    final = Path(out) / name
    os.replace(part, final)
    return {"name": name, "count": count, "bytes": final.stat().st_size, "sha256": _sha256(final),
            "class_counts": {str(k): v for k, v in sorted(classes.items())}, "bad": bad}


def _write_index(out: Path, split: str, names: list[str]) -> dict[str, Any]:
    """``<split>-index.npy``: every sample's shard, byte offset, size, label and key (``col.index_array``),
    so readers (an S3 bucket above all) never scan the tar headers. Deterministic bytes, like the shards."""
    buf = io.BytesIO()
    np.save(buf, col.index_array([col.index_shard(str(out / name)) for name in names]), allow_pickle=False)
    name = f"{split}-index.npy"
    atomic_write_bytes(out / name, buf.getvalue())
    return {"name": name, "bytes": len(buf.getvalue()), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}


def pack(src: str | Path, out: str | Path, *, shorter_side: int = 0, shard_size: int = 1000, workers: int = 1,
         skip_bad: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Pack the ImageFolder ``src`` into shards in ``out``; returns the manifest. Resumes a killed
    pack of the same source and settings; refuses a folder packed otherwise (one line)."""
    if shard_size < 1:
        raise ValueError(f"--shard-size {shard_size} must be >= 1")
    if shorter_side < 0:
        raise ValueError(f"--shorter-side {shorter_side} must be >= 0 (0 = copy images unchanged)")
    c = col.open_collection(f"imagefolder:{src}")
    out = Path(out).expanduser()
    if out.resolve() == Path(c.root) or Path(c.root) in out.resolve().parents:
        raise ValueError(f"--out {out} is inside the source folder {c.root} (expected a folder outside it)")
    settings = {"format": FORMAT, "version": VERSION, "source_fingerprint": c.fingerprint,
                "shorter_side": shorter_side, "shard_size": shard_size, "classes": list(c.classes)}
    manifest_path = out / col.MANIFEST
    if manifest_path.exists():
        existing = json.loads(manifest_path.read_text())
        if {k: existing.get(k) for k in settings} == settings:
            return existing  # already packed, nothing to do
        raise ValueError(f"{out} already holds a pack of other data or settings ({manifest_path}); "
                         "expected an empty or new --out folder")
    progress_path = out / PROGRESS
    done: dict[str, dict] = {}
    if progress_path.exists():
        state = json.loads(progress_path.read_text())
        if state.get("settings") != settings:
            raise ValueError(f"{out} holds an unfinished pack of other data or settings ({progress_path}); "
                             "expected the same SRC and options, or a new --out folder")
        done = state["shards"]
    elif out.exists() and any(not p.name.endswith(".part") for p in out.iterdir()):  # .part: a killed first shard
        raise ValueError(f"--out {out} is not empty and holds no pack (expected an empty or new folder)")
    out.mkdir(parents=True, exist_ok=True)

    jobs = []
    for split, listing in (("train", c.train), ("val", c.test)):
        if listing is None:
            continue
        assert isinstance(listing, col.FolderListing)
        n = len(listing)
        for k, start in enumerate(range(0, n, shard_size)):
            name = f"{split}-{k:06d}.tar"
            idx = np.arange(start, min(start + shard_size, n))
            jobs.append((split, name, (str(out), name, split, listing.base,
                                       [p.decode() for p in listing.paths[idx]], listing.labels[idx].tolist(),
                                       start, shorter_side, skip_bad)))
    total = sum(len(j[2][4]) for j in jobs)
    finished = 0
    entries: dict[str, dict] = {}
    todo = []
    for split, name, args in jobs:
        entry = done.get(name)
        path = out / name
        if entry and path.exists() and path.stat().st_size == entry["bytes"] and _sha256(path) == entry["sha256"]:
            entries[name] = entry
            finished += len(args[4])
        else:
            todo.append((split, name, args))
    if progress:
        progress("pack", finished, total)

    def record(entry: dict[str, Any], n: int) -> None:
        nonlocal finished
        if "error" in entry:
            raise ValueError(entry["error"])
        entries[entry["name"]] = entry
        done[entry["name"]] = entry
        atomic_write_text(progress_path, json.dumps({"settings": settings, "shards": done}))
        finished += n
        if progress:
            progress("pack", finished, total)

    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for (_, _, args), entry in zip(todo, pool.map(_write_shard, [t[2] for t in todo])):
                record(entry, len(args[4]))
    else:
        for _, _, args in todo:
            record(_write_shard(args), len(args[4]))

    splits: dict[str, Any] = {}
    for split, name, _ in jobs:
        e = entries[name]
        s = splits.setdefault(split, {"count": 0, "class_counts": Counter(), "shards": [], "skipped_bad": []})
        s["count"] += e["count"]
        s["class_counts"].update({int(k): v for k, v in e["class_counts"].items()})
        s["shards"].append({k: e[k] for k in ("name", "count", "bytes", "sha256")})
        s["skipped_bad"] += e.get("bad", [])
    for split, s in splits.items():
        s["class_counts"] = {c.classes[k]: v for k, v in sorted(s["class_counts"].items())}
        s["index"] = _write_index(out, split, [e["name"] for e in s["shards"]])
    manifest = {**settings, "splits": splits}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    progress_path.unlink(missing_ok=True)
    col.clear()
    return manifest


# ---------------------------------------------------------------------------------------------
# check


def _verify(args: tuple) -> list[str]:
    """Unreadable samples of one chunk of a listing (run in a worker process)."""
    from xtra.data.transforms import verify_image

    listing, idx = args
    bad = []
    for i in idx:
        try:
            verify_image(listing.read(int(i)))
        except Exception as e:  # noqa: BLE001
            bad.append(f"{listing.name(int(i))}: {type(e).__name__}: {e}".replace("\n", " "))
    return bad


def check(name: str, *, workers: int = 1, progress: Progress | None = None, chunk: int = 256) -> dict[str, Any]:
    """Decode every image of a collection (``imagefolder:PATH``, ``wds:PATTERN``, or a bare folder
    path, taken as an image folder or a pack). Returns classes, per-split counts and class counts,
    the unreadable files (path and why) and the non-image files ignored."""
    if not name.startswith(col.PATH_PREFIXES):
        path = Path(name).expanduser()
        name = f"wds:{path}" if (path / col.MANIFEST).is_file() else f"imagefolder:{path}"
    c = col.open_collection(name)
    splits = {"train": c.train} | ({"val": c.test} if c.test is not None else {})
    total = sum(len(s) for s in splits.values())
    report: dict[str, Any] = {"collection": name, "kind": c.kind, "root": c.root, "fingerprint": c.fingerprint,
                              "classes": list(c.classes), "non_image_files": c.ignored, "splits": {},
                              "unreadable": []}
    done = 0
    for split, listing in splits.items():
        counts = np.bincount(listing.labels, minlength=len(c.classes))
        report["splits"][split] = {"count": len(listing),
                                   "class_counts": {c.classes[k]: int(v) for k, v in enumerate(counts)}}
        jobs = [(listing, np.arange(s, min(s + chunk, len(listing)))) for s in range(0, len(listing), chunk)]
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_verify, jobs)
                for (_, idx), bad in zip(jobs, results):
                    report["unreadable"] += bad
                    done += len(idx)
                    if progress:
                        progress("check", done, total)
        else:
            for job in jobs:
                report["unreadable"] += _verify(job)
                done += len(job[1])
                if progress:
                    progress("check", done, total)
    return report
