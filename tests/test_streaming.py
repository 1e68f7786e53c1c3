"""Path-based collections (imagefolder:, wds:) on a generated collection of real image files: JPEG and
PNG, varied sizes and aspect ratios, grayscale and CMYK, one truncated JPEG, non-image files.
Pack round trip, check, streamed pretraining (exact resume, disjoint ranks), probing, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import CrashOnce
from typer.testing import CliRunner

from xtra.checkpoint import load_checkpoint
from xtra.cli.data import app
from xtra.config import DataConfig, PretrainConfig, ProbeConfig, model_config
from xtra.data import BadCollection, DatasetNotFound, clear_cache, fingerprint, load_dataset, locate, stream, transforms
from xtra.data.generate import make_imagefolder, write_image
from xtra.data.pack import check, pack
from xtra.pretrain import pretrain
from xtra.probe import probe_run

TINY = model_config("tiny", block_size=2)
N_CLASSES, PER_CLASS, VAL_PER_CLASS = 3, 16, 4


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coll") / "imagenet-like"
    return make_imagefolder(root, N_CLASSES, PER_CLASS, VAL_PER_CLASS, mean_side=48, seed=0, mixed=True,
                            truncated=1, extra_files=True)


@pytest.fixture(scope="module")
def packed(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "shards"
    pack(folder, out, shard_size=20)
    return out


@pytest.fixture(autouse=True)
def _fresh():
    yield
    clear_cache()


def _data(name: str, **kw) -> DataConfig:
    return DataConfig(name=name, **{"val_size": 6, "workers": 0, "skip_bad": True, **kw})


def _cfg(**kw) -> PretrainConfig:
    base = dict(samples=96, batch_size=16, warmup_samples=16, lr=2e-3, checkpoint_every=48, log_every=2,
                device="cpu")
    return PretrainConfig(**{**base, **kw})


def test_generated_collection_has_every_kind_of_file(folder):
    from PIL import Image

    modes, formats, sizes = set(), set(), set()
    for path in (folder / "train").glob("*/*.*"):
        if path.suffix == ".txt":
            continue
        try:
            with Image.open(path) as im:
                im.load()
                modes.add(im.mode)
                formats.add(im.format)
                sizes.add(im.size)
        except OSError:
            pass
    assert {"RGB", "L", "CMYK"} <= modes and {"JPEG", "PNG"} <= formats and len(sizes) > 20


def test_pack_round_trip_same_images_and_labels(folder, packed):
    manifest = json.loads((packed / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == N_CLASSES * PER_CLASS
    assert manifest["splits"]["val"]["count"] == N_CLASSES * VAL_PER_CLASS
    assert manifest["splits"]["train"]["class_counts"] == {f"class_{c:03d}": PER_CLASS for c in range(N_CLASSES)}
    assert [s["name"] for s in manifest["splits"]["train"]["shards"]] == [f"train-{k:06d}.tar" for k in range(3)]
    a = load_dataset(_data(f"imagefolder:{folder}"), 32, 3)
    b = load_dataset(_data(f"wds:{packed}"), 32, 3)
    assert a.class_names == b.class_names == tuple(f"class_{c:03d}" for c in range(N_CLASSES))
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert len(x) > 0 and torch.equal(x.images[:], y.images[:]) and torch.equal(x.labels, y.labels)
    # The same shards found by a brace pattern (no manifest: labels as numbers) give the same train images.
    c = stream.splits(_data(f"wds:{packed}/train-{{000000..000002}}.tar"))
    assert len(c.collection.train) == N_CLASSES * PER_CLASS and len(c.collection.test) == N_CLASSES * VAL_PER_CLASS


def test_fingerprint_follows_content_not_path(folder, packed, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    a, b = fingerprint(DataConfig(name=f"imagefolder:{folder}")), fingerprint(DataConfig(name=f"imagefolder:{moved}"))
    assert a == b and a.startswith("imagefolder-")
    shutil.copytree(packed, tmp_path / "shards2")
    assert fingerprint(DataConfig(name=f"wds:{packed}")) == fingerprint(DataConfig(name=f"wds:{tmp_path / 'shards2'}"))
    write_image(moved / "train" / "class_000" / "extra.jpg", np.random.default_rng(0), 0, 3, (40, 30))
    clear_cache()
    assert fingerprint(DataConfig(name=f"imagefolder:{moved}")) != a


def test_pack_resumes_after_a_kill(folder, packed, tmp_path):
    out = tmp_path / "killed"
    seen = []

    def die_after_two_shards(what, done, total):
        seen.append(done)
        if len(seen) == 3:  # the initial call, then two finished shards
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack(folder, out, shard_size=20, progress=die_after_two_shards)
    assert not (out / "manifest.json").exists()
    first = (out / "train-000000.tar").stat()
    resumed = pack(folder, out, shard_size=20)
    assert (out / "train-000000.tar").stat().st_mtime_ns == first.st_mtime_ns  # checked, not rewritten
    assert resumed == json.loads((packed / "manifest.json").read_text())  # byte-identical shards
    assert not (out / ".pack-progress.json").exists()
    with pytest.raises(ValueError, match="already holds a pack of other data or settings"):
        pack(folder, out, shard_size=7)


def test_check_lists_unreadable_class_counts_and_ignored_files(folder, packed):
    report = check(str(folder))
    assert report["non_image_files"] == 2 * N_CLASSES  # a README.txt per class folder and split
    assert report["splits"]["val"]["class_counts"] == {f"class_{c:03d}": VAL_PER_CLASS for c in range(N_CLASSES)}
    assert len(report["unreadable"]) == 1 and "truncated" in report["unreadable"][0].lower()
    result = CliRunner().invoke(app, ["check", str(packed), "--quiet", "--workers", "1"])
    assert result.exit_code == 1 and "unreadable images: 1" in result.output and "train-0000" in result.output


def test_bad_input_is_one_line_and_writes_nothing(folder, tmp_path):
    run = tmp_path / "run"

    def refused(name: str, match: str, error=ValueError) -> None:
        with pytest.raises(error, match=match) as info:
            pretrain(TINY, _data(name), _cfg(), run)
        assert "\n" not in str(info.value) and not run.exists()

    refused(f"imagefolder:{tmp_path / 'missing'}", "missing", DatasetNotFound)
    empty = tmp_path / "emptyclass"
    shutil.copytree(folder, empty)
    (empty / "train" / "class_zzz").mkdir()
    (empty / "train" / "class_zzz" / "notes.txt").write_text("no images here")
    refused(f"imagefolder:{empty}", r"class folder .*class_zzz has no images")
    stray = tmp_path / "strayval"
    shutil.copytree(folder, stray)
    shutil.copytree(stray / "val" / "class_000", stray / "val" / "dogs")
    refused(f"imagefolder:{stray}", r"classes dogs are not train classes")
    refused(f"wds:{tmp_path}/nothing-*.tar", "matches no files")
    refused(f"wds:{tmp_path}/s-{{000..002}}.tar", r"shard .*s-000.tar does not exist")
    (tmp_path / "broken-000.tar").write_bytes(b"\x00garbage" * 100)
    refused(f"wds:{tmp_path}/broken-000.tar", r"broken-000.tar: not a readable tar shard", BadCollection)
    result = CliRunner().invoke(app, ["pack", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_bad_image_stops_by_default_and_is_counted_with_skip_bad(folder, tmp_path):
    budget = _cfg(samples=N_CLASSES * PER_CLASS, checkpoint_every=1000)  # one epoch: every image once
    with pytest.raises(ValueError, match=r"class_\d+_\d+\.jpg: cannot read image .*data\.skip_bad=true") as info:
        pretrain(TINY, _data(f"imagefolder:{folder}", skip_bad=False), budget, tmp_path / "stop")
    assert "\n" not in str(info.value)
    pretrain(TINY, _data(f"imagefolder:{folder}"), budget, tmp_path / "skip")
    rows = [json.loads(line) for line in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_bad"] == 1 and all("data_stall" in r for r in rows)


def test_streamed_resume_is_bitwise_equal_to_uninterrupted(folder, tmp_path):
    data = _data(f"imagefolder:{folder}", workers=2)
    full, parted = tmp_path / "full", tmp_path / "parted"
    pretrain(TINY, data, _cfg(), full, seed=3)
    crash = [CrashOnce(48)]
    with pytest.raises(RuntimeError, match="injected fault"):
        pretrain(TINY, data, _cfg(), parted, seed=3, hooks=crash)
    state = load_checkpoint(parted)
    assert state["samples_seen"] == 48 and state["data"]["epoch"] == 1 and state["data"]["streamed"]
    assert state["data"]["mean"] == list(transforms.natural_stats(1)[0])  # normalization recorded in the run
    pretrain(TINY, _data(f"imagefolder:{folder}", workers=0), _cfg(), parted, seed=3, hooks=crash)
    a, b = load_checkpoint(full)["model"], load_checkpoint(parted)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [[json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (full, parted)]
    assert rows[0] == rows[1]


def test_two_ranks_read_disjoint_halves_of_the_same_images(folder):
    n, seed, total, batch = 48, 5, 240, 16  # batches within epochs: disjoint per step
    one = stream.planned_images(n, seed, 0, 1, 0, total, batch, 2)
    r0 = stream.planned_images(n, seed, 0, 2, 0, total, batch, 2)
    r1 = stream.planned_images(n, seed, 1, 2, 0, total, batch, 2)
    assert len(r0) == len(r1) == len(one) // 2
    for step in range(len(one) // batch):  # per step: disjoint, and together the one-worker batch
        a, b = r0[step * 8:(step + 1) * 8], r1[step * 8:(step + 1) * 8]
        assert not set(a.tolist()) & set(b.tolist())
        assert np.array_equal(np.concatenate([a, b]), one[step * batch:(step + 1) * batch])
    for epoch in range(total // n):  # and every epoch covers each image once
        assert sorted(one[epoch * n:(epoch + 1) * n].tolist()) == list(range(n))
    # Decoded: the two ranks' crops are exactly the rows of the one-worker batch.
    cfg = _data(f"imagefolder:{folder}")
    sources = [stream.open_stream(cfg, 32, 3, seed=seed, rank=r, size=w, total=64, batch_size=16, share=2)
               for r, w in ((0, 1), (0, 2), (1, 2))]
    for samples in (0, 16, 32):
        whole, first, second = (s.batch(samples // 16, samples, 16) for s in sources)
        if len(whole) == 16:  # (a batch holding the truncated file is one short on one side)
            assert torch.equal(torch.cat([first, second]), whole)


def test_eval_transform_is_deterministic_and_centred(folder):
    from PIL import Image

    assert transforms.eval_resize(256) == 300 and transforms.eval_resize(32) == 37
    import io

    im = Image.new("RGB", (400, 200), (255, 0, 0))
    im.paste((0, 0, 255), (200, 0, 400, 200))  # left red, right blue
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    out = transforms.eval_image(buf.getvalue(), 32, 3)  # 200 -> 37 px high, 74 wide, centre 32
    assert out.shape == (3, 32, 32)
    assert out[0, :, :12].min() > 200 and out[2, :, -12:].min() > 200  # red left, blue right of the centre
    assert np.array_equal(out, transforms.eval_image(buf.getvalue(), 32, 3))
    a = load_dataset(_data(f"imagefolder:{folder}", workers=2), 32, 1)
    clear_cache()
    b = load_dataset(_data(f"imagefolder:{folder}"), 32, 1)
    assert torch.equal(a.test.images[:], b.test.images[:]) and a.mean == transforms.natural_stats(1)[0]


def test_random_resized_crop_follows_scale_and_ratio():
    rng = np.random.default_rng(0)
    boxes = [transforms.crop_box(500, 375, (0.3, 1.0), (0.75, 1.5), rng) for _ in range(2000)]
    areas = np.array([w * h / (500 * 375) for _, _, w, h in boxes])
    ratios = np.array([w / h for _, _, w, h in boxes])
    # (draws too wide or too tall for the image are redrawn, so the median is below 0.65)
    assert areas.min() >= 0.29 and areas.max() <= 1.0 and 0.45 < np.median(areas) < 0.7
    assert ratios.min() >= 0.74 and ratios.max() <= 1.51
    assert all(0 <= x and 0 <= y and x + w <= 500 and y + h <= 375 for x, y, w, h in boxes)


@pytest.mark.parametrize("kind", ["imagefolder", "wds"])
def test_pretrain_and_probe_end_to_end(kind, folder, packed, tmp_path):
    name = f"imagefolder:{folder}" if kind == "imagefolder" else f"wds:{packed}"
    data = _data(name, workers=1)
    result = pretrain(TINY, data, _cfg(samples=64), tmp_path, seed=0)
    assert result["samples_seen"] == 64 and np.isfinite(result["val_loss"])
    probe = probe_run(tmp_path, cfg=ProbeConfig(epochs=2, warmup_epochs=0, lrs=(1e-3,), batch_size=16), seed=0,
                      device="cpu")
    assert probe["meta"]["n_test"] == N_CLASSES * VAL_PER_CLASS and probe["meta"]["num_classes"] == N_CLASSES
    assert 0.0 <= probe["linear"]["test_top1"] <= 1.0
    assert locate(data) in (str(folder.resolve()), str(packed))


def test_reduced_scale_jpeg_decode_matches_full_decode(tmp_path):
    """The crop is drawn in full-resolution coordinates; decoding a JPEG at 1/2..1/8 scale (draft)
    must cut the same region (a few grey levels apart), for every box, without failing."""
    rng = np.random.default_rng(1)
    for i, size in enumerate([(640, 427), (333, 777), (1000, 999)]):
        path = tmp_path / f"{i}.jpg"
        write_image(path, rng, i, 3, size)
        data = path.read_bytes()
        for s in range(40):
            fast = transforms.train_image(data, 32, 3, (0.3, 1.0), (0.75, 1.5), True, transforms.sample_rng(0, i, s))
            full = transforms.train_image(data, 32, 3, (0.3, 1.0), (0.75, 1.5), True, transforms.sample_rng(0, i, s),
                                          fast=False)
            assert fast.shape == (3, 32, 32)
            assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4


def test_workers_advice_is_gpu_rate_over_worker_rate():
    import math

    from xtra.costs import flops_per_image
    from xtra.data import MEASURED_WORKER_RATE, workers_advice

    vit = model_config("vit-b/16", block_size=4)
    got = workers_advice(vit, 100.0)
    gpu = 0.4 * 989e12 / flops_per_image(vit)
    assert got["gpu_images_per_s"] == pytest.approx(gpu) and got["workers"] == math.ceil(1.25 * gpu / 100.0)
    assert f"--set data.workers={got['workers']}" in got["advice"]
    assert workers_advice(vit)["per_worker_images_per_s"] == MEASURED_WORKER_RATE[256]
    with pytest.raises(ValueError, match="must be > 0"):
        workers_advice(vit, 0.0)
