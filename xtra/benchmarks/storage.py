"""The upload overhead of a trial directory (`xtra bench --sections orchestration`)."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from xtra import trialdir as td
from xtra.storage import Storage, StorageError
from xtra.storage.names import local_files, touch


def measure_upload(storage: Storage, trial_dir: str | os.PathLike[str], *, trial_wall_s: float,
                   checkpoint: str = td.CHECKPOINT, repeats: int = 3, rel: str | None = None) -> dict[str, Any]:
    """Upload overhead of a trial directory, for `xtra bench --sections orchestration`.

    Measures (median of `repeats`): one PUT of the checkpoint file; a first commit of the whole
    trial directory; a re-commit after the checkpoint changed (what every later checkpoint costs).
    Returns seconds and ratios to `trial_wall_s`. Works on a copy; cleans up what it wrote."""
    if not trial_wall_s > 0:
        raise ValueError(f"trial_wall_s={trial_wall_s!r}: must be > 0")
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r}: must be >= 1")
    trial_dir = Path(trial_dir)
    if not (trial_dir / checkpoint).is_file():
        raise StorageError(f"{trial_dir}: no {checkpoint} to measure (run a trial that checkpoints first)")
    rel = rel or f"bench/upload-{secrets.token_hex(4)}"
    ckpt_s, full_s, incr_s = [], [], []
    with tempfile.TemporaryDirectory(prefix="xtra-upload-bench-") as tmp:
        work = Path(tmp) / "trial"
        shutil.copytree(trial_dir, work)
        files = local_files(work)
        total = sum((work / n).stat().st_size for n in files)
        ck_size = (work / checkpoint).stat().st_size
        try:
            for i in range(repeats):
                t = time.perf_counter()
                storage.put_file(work / checkpoint, f"{rel}/put/{checkpoint}")
                ckpt_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                storage.upload_dir(work, f"{rel}/dir{i}")
                full_s.append(time.perf_counter() - t)
                touch(work / checkpoint)
                t = time.perf_counter()
                storage.upload_dir(work, f"{rel}/dir{i}")
                incr_s.append(time.perf_counter() - t)
        finally:
            storage.delete(rel)

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    out = {"storage": storage.kind, "checkpoint_bytes": ck_size, "trial_dir_bytes": total,
           "trial_dir_files": len(files), "checkpoint_put_s": med(ckpt_s), "trial_dir_upload_s": med(full_s),
           "checkpoint_commit_s": med(incr_s), "trial_wall_s": trial_wall_s, "repeats": repeats}
    out["checkpoint_put_ratio"] = out["checkpoint_put_s"] / trial_wall_s
    out["checkpoint_commit_ratio"] = out["checkpoint_commit_s"] / trial_wall_s
    out["trial_dir_upload_ratio"] = out["trial_dir_upload_s"] / trial_wall_s
    return out


def measure_upload_local_s3(trial_dir: str | os.PathLike[str], *, trial_wall_s: float,
                            repeats: int = 3) -> dict[str, Any]:
    """`measure_upload` against a fresh moto S3 server on 127.0.0.1 (needs the dev extra)."""
    from xtra.testing.s3server import LocalS3Server

    with LocalS3Server() as server:
        saved = {k: os.environ.get(k) for k in server.env}
        os.environ.update(server.env)
        try:
            server.create_bucket("bench")
            return measure_upload(Storage.from_uri("s3://bench/xtra"), trial_dir, trial_wall_s=trial_wall_s,
                                  repeats=repeats)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
