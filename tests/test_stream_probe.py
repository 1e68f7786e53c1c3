"""Probing a streamed collection (imagefolder:/wds:) through lazy splits: the same results as a fully
decoded in-memory copy, no decoded pixels kept, and augmented training crops cut from the files,
deterministic whoever decodes them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from xtra.config import DataConfig, ProbeConfig, model_config
from xtra.data import Split, clear_cache, load_dataset, transforms
from xtra.data.generate import make_imagefolder
from xtra.probe import augmenter, limit_train, probe, probe_seed, random_encoder

TINY = model_config("tiny", block_size=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("probe-coll") / "photos", 3, 24, 6, mean_side=48, seed=1,
                            mixed=True)


@pytest.fixture(autouse=True)
def _fresh():
    torch.set_num_threads(1)
    yield
    clear_cache()


def _lazy(folder: Path, workers: int = 0):
    cfg = DataConfig(name=f"imagefolder:{folder}", val_size=12, workers=workers)
    return load_dataset(cfg, TINY.img_size, TINY.channels)


def _in_memory(dataset):
    """The same dataset with every split decoded into a plain tensor (the old in-memory path)."""
    full = {name: Split(getattr(dataset, name).images[:], getattr(dataset, name).labels)
            for name in ("train", "val", "test")}
    return dataclasses.replace(dataset, **full)


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_lazy_probe_gives_the_in_memory_results(folder, cache):
    lazy = _lazy(folder, workers=1)
    assert all(getattr(getattr(lazy, s).images, "lazy", False) for s in ("train", "val", "test"))
    memory = _in_memory(lazy)
    assert isinstance(memory.train.images, torch.Tensor)
    encoder = random_encoder(TINY, 0).eval()
    cfg = ProbeConfig(kinds=("linear", "attentive"), epochs=2, warmup_epochs=0, lrs=(1e-3, 1e-2), batch_size=16,
                      limit_train=50, cache=cache)
    a, b = probe(encoder, lazy, cfg, seed=4), probe(encoder, memory, cfg, seed=4)
    for kind in cfg.kinds:
        assert a[kind]["cache"] == b[kind]["cache"]
        assert a[kind]["val_top1"] == b[kind]["val_top1"] and a[kind]["test_top1"] == b[kind]["test_top1"]


def test_lazy_split_keeps_no_decoded_pixels(folder):
    dataset = _lazy(folder)
    decoder = dataset.train.images.decoder
    n = sum(len(getattr(dataset, s)) for s in ("train", "val", "test"))
    for name in ("train", "val", "test"):
        images = getattr(dataset, name).images
        assert images.nbytes_held() == 8 * len(images)  # row numbers only
        assert images.shape == (len(images), TINY.channels, TINY.img_size, TINY.img_size)
        images[0:16], images[16:32], images[torch.tensor([3, 1, 2])]  # reads keep nothing behind
        assert images.nbytes_held() == 8 * len(images)
    listing = decoder.listing
    held = sum(a.nbytes for part in listing.parts for a in (part.labels, part.paths)) + listing.starts.nbytes
    assert held < 64 * n  # a few bytes per image, no pixels (a decoded image is 1 KiB here)
    tensors = [v for obj in (decoder, dataset.train.images) for v in vars(obj).values() if isinstance(v, torch.Tensor)]
    assert sum(t.numel() * t.element_size() for t in tensors) < 64  # the mean/std vectors
    subset = limit_train(dataset, 20).train.images
    assert getattr(subset, "lazy", False) and subset.nbytes_held() == 8 * 20  # a capped train split stays lazy


def test_in_order_reads_prefetch_and_random_reads_agree(folder):
    lazy = _lazy(folder, workers=2)
    full = lazy.train.images[:]
    assert torch.equal(torch.cat([lazy.train.images[a:a + 10] for a in range(0, len(full), 10)]), full)
    idx = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[:17]
    assert torch.equal(lazy.train.images[idx], full[idx])
    assert torch.equal(lazy.train.images[5], full[5]) and torch.equal(lazy.train.images[-1], full[-1])
    with pytest.raises(IndexError, match="out of range"):
        lazy.train.images[torch.tensor([len(full)])]


def _crops(dataset, kind: str, step: int, idx: torch.Tensor, cfg: ProbeConfig) -> torch.Tensor:
    augment = augmenter(cfg, dataset, 7, kind, torch.device("cpu"))
    return augment.from_files(dataset.train.images, idx, step)


@pytest.mark.parametrize("kind", ["linear", "attentive"])
def test_augmented_streamed_batches_are_deterministic_and_cut_from_the_files(folder, kind):
    cfg = ProbeConfig(augment=True, kinds=(kind,))
    one = _lazy(folder, workers=0)
    idx = torch.tensor([4, 0, 9, 30, 2, 11])
    a = _crops(one, kind, 3, idx, cfg)
    assert a.shape == (6, TINY.channels, TINY.img_size, TINY.img_size)
    assert torch.equal(a, _crops(one, kind, 3, idx, cfg))  # the same (seed, step): the same batch
    assert not torch.equal(a, _crops(one, kind, 4, idx, cfg))  # another step: other crops
    clear_cache()
    two = _lazy(folder, workers=2)  # decoded in two worker processes: bitwise the same
    assert torch.equal(a, _crops(two, kind, 3, idx, cfg))
    if kind == "linear":  # nothing after the crop: each row is the file's RandomResizedCrop + flip
        listing = two.train.images.decoder.listing
        mean, std = transforms.natural_stats(TINY.channels)
        for j, i in enumerate(idx.tolist()):
            pixels = transforms.train_image(listing.read(i), TINY.img_size, TINY.channels, cfg.crop_scale,
                                            cfg.crop_ratio, one.hflip,
                                            transforms.sample_rng(probe_seed(7, kind, "crop"), 3, j))
            ref = (torch.from_numpy(pixels.copy()).float() - torch.tensor(mean).view(-1, 1, 1) * 255) / (
                torch.tensor(std).view(-1, 1, 1) * 255)
            assert torch.equal(a[j], ref)


def test_augmented_streamed_probe_runs_and_repeats(folder):
    encoder = random_encoder(TINY, 0).eval()
    cfg = ProbeConfig(kinds=("linear", "attentive"), epochs=2, warmup_epochs=0, lrs=(1e-3,), batch_size=16,
                      augment=True, limit_train=48)
    first = probe(encoder, _lazy(folder, workers=1), cfg, seed=2)
    clear_cache()
    again = probe(encoder, _lazy(folder, workers=0), cfg, seed=2)
    for kind in cfg.kinds:
        assert first[kind]["cache"] == "off"
        assert first[kind]["val_top1"] == again[kind]["val_top1"]
        assert first[kind]["test_top1"] == again[kind]["test_top1"]
    assert np.isfinite(first["linear"]["best_val_top1"])
