"""xtra.data and `xtra data`: real Fashion-MNIST, every reader on small files written here, the batched
augmentation, clear errors, and downloads from a local HTTP server (never the internet)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import math
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xtra.cli.data import app
from xtra.config import DataConfig
from xtra.data import (
    Dataset,
    DatasetNotFound,
    DownloadError,
    augment,
    clear_cache,
    denormalize,
    download,
    list_datasets,
    load_dataset,
    locate,
    registry,
)

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not SYSTEM_FASHION.is_dir(),
                                   reason="needs Debian's dataset-fashion-mnist (make setup installs it)")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's data home or follows a mirror set in the environment."""
    monkeypatch.setenv("XTRA_DATA", str(tmp_path_factory.mktemp("xtra-data-home")))
    monkeypatch.delenv("XTRA_DATA_BASE_URL", raising=False)


# ---------------------------------------------------------------------------------------------
# Small files in the real formats


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes, as LeCun's format defines it."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def tiny_idx_set(n_train: int = 40, n_test: int = 10, seed: int = 0) -> dict[str, bytes]:
    """Gzipped IDX files of random 28x28 images, labels cycling through 10 classes."""
    rng = np.random.default_rng(seed)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(idx_bytes(rng.integers(0, 256, (n, 28, 28))))
        files[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(np.arange(n) % 10))
    return files


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return folder


def cifar10_batches(n: int = 20, seed: int = 0) -> dict[str, bytes]:
    """cifar-10-batches-py in the real layout: dicts with 'data' (N, 3072) uint8, channel-major rows,
    and 'labels' lists. Image 0 of every batch is pure red."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        x[0] = 0
        x[0, :1024] = 255  # red plane of image 0
        batch = {"batch_label": name, "labels": [int(v) for v in np.arange(n) % 10], "data": x,
                 "filenames": [f"img{i}.png" for i in range(n)]}
        out[name] = pickle.dumps(batch, protocol=2)
    return out


def serve(folder: Path):
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server over a folder the test fills; yields (folder, base URL)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    server, url = serve(folder)
    try:
        yield folder, url
    finally:
        server.shutdown()
        server.server_close()


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------------------------
# Real Fashion-MNIST


@needs_fashion
def test_fashion_mnist_loads_padded_and_normalized():
    clear_cache()
    ds = load_dataset(DataConfig(name="fashion-mnist", val_fraction=0.1), img_size=32, channels=1)
    assert isinstance(ds, Dataset) and ds.num_classes == 10 and ds.hflip is True
    assert ds.source == str(SYSTEM_FASHION)
    for split, n in ((ds.train, 54_000), (ds.val, 6_000), (ds.test, 10_000)):
        assert split.images.shape == (n, 1, 32, 32) and split.images.dtype == torch.float32
        assert split.labels.shape == (n,) and split.labels.dtype == torch.int64
    assert abs(ds.train.images.mean().item()) < 1e-3
    assert abs(ds.train.images.std().item() - 1) < 1e-3
    # The official set has 6000 train and 1000 test images per class: the carve loses none.
    counts = torch.bincount(ds.train.labels, minlength=10) + torch.bincount(ds.val.labels, minlength=10)
    assert counts.tolist() == [6000] * 10
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    # 28 -> 32 is a zero pad of 2 px; the middle is the file's pixels / 255, exactly.
    raw = np.frombuffer(gzip.decompress((SYSTEM_FASHION / "t10k-images-idx3-ubyte.gz").read_bytes()),
                        dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    pixels = denormalize(ds.test.images[:5], ds)
    assert pixels[:, :, :2].abs().max() < 1e-6 and pixels[:, :, :, -2:].abs().max() < 1e-6
    assert torch.allclose(pixels[:, 0, 2:30, 2:30], torch.from_numpy(raw[:5] / 255.0).float(), atol=1e-5)
    raw_labels = np.frombuffer(gzip.decompress((SYSTEM_FASHION / "t10k-labels-idx1-ubyte.gz").read_bytes()),
                               dtype=np.uint8, offset=8)
    assert ds.test.labels.tolist() == raw_labels.astype(np.int64).tolist()


@needs_fashion
def test_fashion_split_depends_only_on_split_seed():
    base = DataConfig(name="fashion-mnist")
    ds = load_dataset(base, 32, 1)
    assert load_dataset(base, 32, 1) is ds  # memoized
    clear_cache()
    other = DataConfig(name="fashion-mnist", augment=False, crop_scale=(0.5, 0.9), crop_ratio=(1.0, 1.0),
                       hflip="auto", synthetic_size=4096)
    again = load_dataset(other, 32, 1)
    assert again is not ds
    assert torch.equal(again.val.labels, ds.val.labels)
    assert torch.equal(again.val.images, ds.val.images)
    assert torch.equal(again.train.labels, ds.train.labels)
    assert again.mean == ds.mean and again.std == ds.std
    reseeded = load_dataset(DataConfig(name="fashion-mnist", split_seed=1), 32, 1)
    assert len(reseeded.val) == len(ds.val) and not torch.equal(reseeded.val.labels, ds.val.labels)
    # limit_train caps the train split only; val stays the same set.
    capped = load_dataset(DataConfig(name="fashion-mnist", limit_train=1000), 32, 1)
    assert len(capped.train) == 1000 and torch.equal(capped.val.images, ds.val.images)
    assert len(torch.unique(capped.train.labels)) == 10


@needs_fashion
def test_locate_finds_system_fashion_and_prefers_data_home(tmp_path, monkeypatch):
    assert locate(DataConfig(name="fashion-mnist")) == str(SYSTEM_FASHION)
    home = tmp_path / "home"
    write_files(home / "fashion-mnist", tiny_idx_set())
    monkeypatch.setenv("XTRA_DATA", str(home))
    assert locate(DataConfig(name="fashion-mnist")) == str((home / "fashion-mnist").resolve())
    assert len(load_dataset(DataConfig(name="fashion-mnist"), 32, 1).test) == 10


# ---------------------------------------------------------------------------------------------
# The other readers, on files written here


def test_idx_reader_plain_and_gzipped(tmp_path):
    files = tiny_idx_set(n_train=50, n_test=12, seed=3)
    gz = write_files(tmp_path / "gz", files)
    plain = write_files(tmp_path / "plain", {k[:-3]: gzip.decompress(v) for k, v in files.items()})
    a = load_dataset(DataConfig(name="mnist", root=str(gz), val_fraction=0.2), 32, 1)
    b = load_dataset(DataConfig(name="mnist", root=str(plain), val_fraction=0.2), 32, 1)
    assert a is not b and a.hflip is False  # digits are not mirror-symmetric
    assert (len(a.train), len(a.val), len(a.test)) == (40, 10, 12)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    written = np.frombuffer(gzip.decompress(files["t10k-images-idx3-ubyte.gz"]), np.uint8, offset=16)
    back = denormalize(a.test.images, a)[:, 0, 2:30, 2:30]
    assert torch.allclose(back, torch.from_numpy(written.reshape(-1, 28, 28) / 255.0).float(), atol=1e-5)
    # Resizing instead of padding where the margin is not a small even number.
    c = load_dataset(DataConfig(name="mnist", root=str(gz)), 16, 1)
    assert c.train.images.shape[1:] == (1, 16, 16)


@pytest.mark.parametrize("channels", [1, 3])
def test_digits(channels):
    ds = load_dataset(DataConfig(name="digits"), 32, channels)
    assert ds.source == "scikit-learn bundled" and ds.hflip is False and ds.num_classes == 10
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797 and len(ds.test) == 359
    assert ds.train.images.shape[1:] == (channels, 32, 32) and len(ds.mean) == channels
    assert abs(ds.train.images.mean().item()) < 1e-4 and abs(ds.train.images.std().item() - 1) < 1e-3
    if channels == 3:
        assert torch.equal(ds.train.images[:, 0], ds.train.images[:, 2])
        gray = load_dataset(DataConfig(name="digits"), 32, 1)
        assert torch.allclose(gray.train.images[:, 0], ds.train.images[:, 1])
        assert torch.equal(gray.test.labels, ds.test.labels)  # the held-out test set is fixed


def test_hflip_resolution():
    assert load_dataset(DataConfig(name="digits", hflip="on"), 8, 1).hflip is True
    assert load_dataset(DataConfig(name="synthetic", hflip="auto"), 8, 1).hflip is False
    assert load_dataset(DataConfig(name="synthetic", hflip="on", synthetic_size=64), 8, 1).hflip is True


def test_synthetic_is_deterministic_and_learnable_shape():
    cfg = DataConfig(name="synthetic", synthetic_size=256)
    ds = load_dataset(cfg, 32, 3)
    clear_cache()
    again = load_dataset(cfg, 32, 3)
    assert again is not ds and torch.equal(again.train.images, ds.train.images)
    assert torch.equal(again.test.labels, ds.test.labels)
    assert len(ds.train) + len(ds.val) == 256 and len(ds.test) == 64
    assert ds.source == "synthetic" and ds.num_classes == 10
    assert set(ds.train.labels.tolist()) == set(range(10))
    bigger = load_dataset(DataConfig(name="synthetic", synthetic_size=512), 32, 3)
    assert len(bigger.train) + len(bigger.val) == 512
    # Class structure: images of one class agree on orientation, so their mean spectra differ by class.
    spectra = torch.fft.rfft2(ds.train.images.mean(1)).abs()  # (N, 32, 17)
    per_class = torch.stack([spectra[ds.train.labels == c].mean(0) for c in range(10)])
    within = (spectra - per_class[ds.train.labels]).pow(2).mean()
    between = (per_class - per_class.mean(0)).pow(2).mean()
    assert between > 0.05 * within


def write_png(path: Path, color: tuple[int, int, int], size: int = 20) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


def test_imagefolder_train_val(tmp_path):
    colors = {"blue": (0, 0, 255), "red": (255, 0, 0)}
    for split, n in (("train", 6), ("val", 2)):
        for name, color in colors.items():
            for i in range(n):
                write_png(tmp_path / split / name / f"{i}.png", color, size=20 + i)
    cfg = DataConfig(name=f"imagefolder:{tmp_path}", val_fraction=0.25)
    assert locate(cfg) == str(tmp_path.resolve())
    ds = load_dataset(cfg, 16, 3)
    assert ds.num_classes == 2 and ds.class_names == ("blue", "red") and ds.hflip is True
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 4)
    assert ds.train.images.shape[1:] == (3, 16, 16)
    rgb = denormalize(ds.test.images[:], ds).mean(dim=(2, 3))  # (N, 3); [:] decodes the lazy split
    for label, pixel in zip(ds.test.labels.tolist(), rgb, strict=True):
        expected = torch.tensor(colors[ds.class_names[label]], dtype=torch.float32) / 255
        assert torch.allclose(pixel, expected, atol=1e-4)
    gray = load_dataset(cfg, 16, 1)
    red = denormalize(gray.test.images[:][gray.test.labels == 1], gray)
    assert torch.allclose(red, torch.full_like(red, round(0.299 * 255) / 255), atol=1 / 255)


def test_imagefolder_flat_layout_carves_test(tmp_path):
    for name in ("a", "b", "c"):
        for i in range(10):
            write_png(tmp_path / name / f"{i}.jpg", (i * 20, 0, 0))
    ds = load_dataset(DataConfig(name=f"imagefolder:{tmp_path}"), 8, 3)
    assert len(ds.test) == 6 and len(ds.train) + len(ds.val) == 24 and ds.class_names == ("a", "b", "c")


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetNotFound, match="nope"):
        locate(DataConfig(name=f"imagefolder:{tmp_path / 'nope'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        locate(DataConfig(name=f"imagefolder:{tmp_path / 'empty'}"))
    write_png(tmp_path / "bad" / "x" / "0.png", (1, 2, 3))
    (tmp_path / "bad" / "x" / "1.png").write_bytes(b"not a png")
    bad = load_dataset(DataConfig(name=f"imagefolder:{tmp_path / 'bad'}"), 8, 3)  # lazy: files are read on use
    with pytest.raises(ValueError, match=r"1\.png: cannot read image"):
        for split in (bad.train, bad.val, bad.test):
            split.images[:]


def test_cifar10_from_python_batches(tmp_path):
    folder = write_files(tmp_path / "cifar-10-batches-py", cifar10_batches(n=20))
    cfg = DataConfig(name="cifar10", root=str(tmp_path))  # the folder holding cifar-10-batches-py
    assert locate(cfg) == str(folder.resolve())
    ds = load_dataset(cfg, 32, 3)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (90, 10, 20) and ds.num_classes == 10
    assert ds.class_names[0] == "airplane" and ds.hflip is True
    red = denormalize(ds.test.images[:1], ds)[0]  # test_batch image 0: pure red
    assert torch.allclose(red[0], torch.ones(32, 32), atol=1e-5) and red[1:].abs().max() < 1e-5
    gray = load_dataset(cfg, 32, 1)
    assert torch.allclose(denormalize(gray.test.images[:1], gray), torch.full((1, 1, 32, 32), 0.299), atol=1e-5)


def test_cifar100_fine_labels_and_bytes_keys(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 30), ("test", 10)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [int(v) for v in rng.integers(0, 100, n)], b"coarse_labels": [0] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    ds = load_dataset(DataConfig(name="cifar100", root=str(folder)), 16, 3)
    assert ds.num_classes == 100 and (len(ds.train), len(ds.val), len(ds.test)) == (27, 3, 10)


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = write_files(tmp_path, cifar10_batches(n=4))

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(ValueError, match=r"data_batch_3: not a CIFAR python batch .*refusing"):
        load_dataset(DataConfig(name="cifar10", root=str(folder)), 32, 3)


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_dataset_names_every_path_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_SYSTEM_ROOT", tmp_path / "system")
    home = tmp_path / "home"
    monkeypatch.setenv("XTRA_DATA", str(home))
    with pytest.raises(DatasetNotFound) as err:
        locate(DataConfig(name="fashion-mnist"))
    message = str(err.value)
    assert "\n" not in message
    assert str(home / "fashion-mnist") in message and str(tmp_path / "system" / "fashion-mnist") in message
    assert "xtra data get fashion-mnist" in message and "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(DatasetNotFound, match="xtra data get cifar10"):
        load_dataset(DataConfig(name="cifar10"), 32, 3)
    with pytest.raises(DatasetNotFound) as err:
        locate(DataConfig(name="mnist", root=str(tmp_path / "mine")))
    assert err.value.looked_in == [str(tmp_path / "mine"), str(tmp_path / "mine" / "mnist")]
    copy = pickle.loads(pickle.dumps(err.value))  # errors cross process boundaries under Ray
    assert isinstance(copy, DatasetNotFound) and str(copy) == str(err.value)


def test_incomplete_idx_folder_is_not_found(tmp_path):
    files = tiny_idx_set()
    del files["t10k-labels-idx1-ubyte.gz"]
    write_files(tmp_path, files)
    with pytest.raises(DatasetNotFound, match=str(tmp_path)):
        locate(DataConfig(name="mnist", root=str(tmp_path)))


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda b: b"\x00\x00\x08\x01" + b[4:], r"train-images-idx3-ubyte\.gz: not an IDX image file \(expected magic"),
        (lambda b: b[:-5], r"train-images-idx3-ubyte\.gz: IDX payload has 31355 bytes, expected 31360"),
        (lambda b: b"PK\x03\x04 zip", r"not an IDX image file"),
    ],
)
def test_corrupt_idx_gives_one_clear_line(tmp_path, corrupt, message):
    files = tiny_idx_set()
    raw = gzip.decompress(files["train-images-idx3-ubyte.gz"])
    files["train-images-idx3-ubyte.gz"] = gzip.compress(corrupt(raw))
    write_files(tmp_path, files)
    with pytest.raises(ValueError, match=message) as err:
        load_dataset(DataConfig(name="fashion-mnist", root=str(tmp_path)), 32, 1)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_corrupt_gzip_and_mismatched_counts(tmp_path):
    files = tiny_idx_set()
    files["train-labels-idx1-ubyte.gz"] = files["train-labels-idx1-ubyte.gz"][:20]
    write_files(tmp_path / "a", files)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: corrupt or truncated gzip"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path / "a")), 32, 1)
    files = tiny_idx_set()
    files["t10k-labels-idx1-ubyte.gz"] = gzip.compress(idx_bytes(np.zeros(7)))
    write_files(tmp_path / "b", files)
    with pytest.raises(ValueError, match=r"has 10 images but .*t10k-labels-idx1-ubyte\.gz has 7 labels"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path / "b")), 32, 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="channels=2"):
        load_dataset(DataConfig(name="synthetic"), 32, 2)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        download("svhn")
    with pytest.raises(ValueError, match="bundled with scikit-learn"):
        download("digits")
    with pytest.raises(ValueError, match=r"data.val_size=-1 is out of range \(allowed: 0 to "):
        DataConfig(val_size=-1)
    with pytest.raises(ValueError, match=r"data.workers=-2 is out of range \(allowed: -1 to "):
        DataConfig(workers=-2)
    with pytest.raises(ValueError, match=r"data.name='tfds:x' is not a known dataset .*wds:PATTERN"):
        DataConfig(name="tfds:x")


def test_val_size_carves_a_fixed_number_of_images():
    ds = load_dataset(DataConfig(name="synthetic", synthetic_size=256, val_size=50), 32, 3)
    assert (len(ds.train), len(ds.val)) == (206, 50)
    with pytest.raises(ValueError, match="data.val_size=256 leaves no training images out of 256"):
        load_dataset(DataConfig(name="synthetic", synthetic_size=256, val_size=256), 32, 3)


# ---------------------------------------------------------------------------------------------
# Augmentation


def ramp(b: int = 16, size: int = 32) -> torch.Tensor:
    """Images whose channel 0 is the column index and channel 1 the row index."""
    cols = torch.arange(size, dtype=torch.float32).expand(size, size)
    return torch.stack([cols, cols.T]).expand(b, 2, size, size).contiguous()


def test_augment_is_deterministic_and_keeps_shape():
    x = torch.randn(8, 3, 32, 32)
    cfg = DataConfig()
    a = augment(x, torch.Generator().manual_seed(0), cfg, hflip=True)
    b = augment(x, torch.Generator().manual_seed(0), cfg, hflip=True)
    c = augment(x, torch.Generator().manual_seed(1), cfg, hflip=True)
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(0)
    first, second = augment(x, g, cfg, True), augment(x, g, cfg, True)
    assert torch.equal(first, a) and not torch.equal(first, second)  # the generator advances
    # Bilinear resampling inside the image: values stay within each image's range.
    assert (a.amin(dim=(1, 2, 3)) >= x.amin(dim=(1, 2, 3)) - 1e-5).all()
    assert (a.amax(dim=(1, 2, 3)) <= x.amax(dim=(1, 2, 3)) + 1e-5).all()


def test_augment_full_crop_is_identity():
    x = torch.randn(16, 1, 32, 32)
    cfg = DataConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    out = augment(x, torch.Generator().manual_seed(0), cfg, hflip=False)
    assert torch.allclose(out, x, atol=1e-5)


def test_augment_flips_some_images_only_when_allowed():
    x = torch.randn(64, 3, 16, 16)
    cfg = DataConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    out = augment(x, torch.Generator().manual_seed(0), cfg, hflip=True)
    same = (out - x).abs().amax(dim=(1, 2, 3)) < 1e-5
    flipped = (out - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (same | flipped).all() and 10 < int(flipped.sum()) < 54
    for seed in range(5):
        out = augment(x, torch.Generator().manual_seed(seed), cfg, hflip=False)
        assert torch.allclose(out, x, atol=1e-5)


def test_augment_crop_geometry_follows_scale_and_ratio():
    x = ramp()
    # area 1/4, ratio 1: a half-width, half-height crop, upsampled: the ramps' slopes halve.
    out = augment(x, torch.Generator().manual_seed(0), DataConfig(crop_scale=(0.25, 0.25), crop_ratio=(1, 1)), False)
    dx = out[:, 0, :, 1:] - out[:, 0, :, :-1]
    dy = out[:, 1, 1:, :] - out[:, 1, :-1, :]
    assert torch.allclose(dx, torch.full_like(dx, 0.5), atol=1e-4)
    assert torch.allclose(dy, torch.full_like(dy, 0.5), atol=1e-4)
    assert out[:, 0].amin() >= 0 and out[:, 0].amax() <= 31  # the crop stays inside the image
    starts = out[:, 0, 0, 0]
    assert starts.std() > 1  # and its position varies
    # area 1/4, ratio 4 (width / height): full width, a quarter of the height.
    out = augment(x, torch.Generator().manual_seed(0), DataConfig(crop_scale=(0.25, 0.25), crop_ratio=(4, 4)), False)
    dx = out[:, 0, :, 1:] - out[:, 0, :, :-1]
    dy = out[:, 1, 1:, :] - out[:, 1, :-1, :]
    assert torch.allclose(dx, torch.ones_like(dx), atol=1e-4)
    assert torch.allclose(dy, torch.full_like(dy, 0.25), atol=1e-4)


def test_augment_scale_and_log_ratio_distribution():
    """Width fraction w = sqrt(s r), height h = sqrt(s / r): recover s and r from the ramp slopes."""
    x = ramp(b=2000, size=8)
    cfg = DataConfig(crop_scale=(0.3, 0.9), crop_ratio=(0.5, 2.0))
    out = augment(x, torch.Generator().manual_seed(0), cfg, hflip=False)
    w = (out[:, 0, 4, 5] - out[:, 0, 4, 2]) / 3
    h = (out[:, 1, 5, 4] - out[:, 1, 2, 4]) / 3
    unclipped = (w < 0.999) & (h < 0.999)
    s, log_r = (w * h)[unclipped], torch.log(w / h)[unclipped]
    assert s.min() >= 0.3 - 1e-3 and s.max() <= 0.9 + 1e-3
    assert log_r.min() >= math.log(0.5) - 1e-3 and log_r.max() <= math.log(2.0) + 1e-3
    assert abs(log_r.mean().item()) < 0.05  # log-uniform on a symmetric range: centred on ratio 1


def test_denormalize_round_trip():
    ds = load_dataset(DataConfig(name="synthetic", synthetic_size=128), 16, 3)
    pixels = denormalize(ds.train.images, ds)
    assert pixels.min() >= 0 and pixels.max() <= 1
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    assert torch.allclose((pixels - mean) / std, ds.train.images, atol=1e-5)
    with pytest.raises(ValueError, match="3, H, W"):
        denormalize(torch.zeros(2, 1, 16, 16), ds)


# ---------------------------------------------------------------------------------------------
# Download from a local server


def test_download_verifies_and_lands_atomically(tmp_path, mirror):
    folder, url = mirror
    files = tiny_idx_set(seed=5)
    write_files(folder, files)
    dest_root = tmp_path / "data"
    path = download("fashion-mnist", dest_root=dest_root, base_url=url, progress=False,
                    checksums={k: sha256(v) for k, v in files.items()})
    assert path == dest_root / "fashion-mnist"
    assert sorted(p.name for p in path.iterdir()) == sorted(files)
    assert all((path / k).read_bytes() == v for k, v in files.items())
    assert [p.name for p in dest_root.iterdir()] == ["fashion-mnist"]  # no staging left behind
    assert oct(path.stat().st_mode & 0o777) == oct(0o755)
    ds = load_dataset(DataConfig(name="fashion-mnist", root=str(path)), 32, 1)
    assert len(ds.test) == 10
    # md5 works too, and a second download replaces the files in place.
    files = tiny_idx_set(seed=6)
    write_files(folder, files)
    download("fashion-mnist", dest_root=dest_root, base_url=url, progress=False,
             checksums={k: hashlib.md5(v).hexdigest() for k, v in files.items()})
    assert all((path / k).read_bytes() == v for k, v in files.items())
    assert [p.name for p in dest_root.iterdir()] == ["fashion-mnist"]


def test_download_checksum_mismatch_leaves_nothing(tmp_path, mirror):
    folder, url = mirror
    files = tiny_idx_set()
    write_files(folder, files)
    sums = {k: sha256(v) for k, v in files.items()}
    sums["t10k-images-idx3-ubyte.gz"] = "0" * 64
    dest_root = tmp_path / "data"
    with pytest.raises(DownloadError) as err:
        download("fashion-mnist", dest_root=dest_root, base_url=url, progress=False, checksums=sums)
    message = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "0" * 64 in message
    assert sha256(files["t10k-images-idx3-ubyte.gz"]) in message
    assert list(dest_root.iterdir()) == []
    # Without an override the built-in (official) size and checksum are enforced: these are not Zalando's.
    with pytest.raises(DownloadError, match="train-images-idx3-ubyte.gz: size mismatch .*expected 26421880 bytes"):
        download("fashion-mnist", dest_root=dest_root, base_url=url, progress=False)
    blob = files["train-images-idx3-ubyte.gz"]
    (folder / "train-images-idx3-ubyte.gz").write_bytes(blob + bytes(26_421_880 - len(blob)))  # right size
    with pytest.raises(DownloadError, match="sha256 mismatch .*expected 3aede38d61863908"):
        download("fashion-mnist", dest_root=dest_root, base_url=url, progress=False)
    assert list(dest_root.iterdir()) == []


def test_download_uses_env_mirror_and_reports_http_errors(tmp_path, mirror, monkeypatch):
    folder, url = mirror
    files = write_files(folder, tiny_idx_set())
    monkeypatch.setenv("XTRA_DATA_BASE_URL", url)
    monkeypatch.setenv("XTRA_DATA", str(tmp_path / "home"))
    path = download("mnist", progress=False, checksums={p.name: sha256(p.read_bytes()) for p in files.iterdir()})
    assert path == tmp_path / "home" / "mnist"
    assert locate(DataConfig(name="mnist")) == str(path.resolve())
    with pytest.raises(DownloadError, match=r"cannot download http://127\.0\.0\.1:\d+/missing/cifar-10-python"):
        download("cifar10", dest_root=tmp_path / "x", base_url=url + "missing", progress=False)
    assert list((tmp_path / "x").iterdir()) == []
    with pytest.raises(ValueError, match="checksums given for nope.gz"):
        download("mnist", dest_root=tmp_path / "x", base_url=url, checksums={"nope.gz": "0" * 32})


def test_download_cifar_extracts_into_place(tmp_path, mirror):
    folder, url = mirror
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, blob in cifar10_batches(n=10).items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    tarball = buffer.getvalue()
    (folder / "cifar-10-python.tar.gz").write_bytes(tarball)
    dest_root = tmp_path / "data"
    path = download("cifar10", dest_root=dest_root, base_url=url, progress=False,
                    checksums={"cifar-10-python.tar.gz": hashlib.md5(tarball).hexdigest()})
    assert sorted(p.name for p in path.iterdir()) == ["cifar-10-batches-py"]  # tarball removed
    cfg = DataConfig(name="cifar10", root=str(path))
    assert locate(cfg) == str((path / "cifar-10-batches-py").resolve())
    assert len(load_dataset(cfg, 32, 3).test) == 10


# ---------------------------------------------------------------------------------------------
# CLI


def test_list_datasets_rows():
    rows = {r["name"]: r for r in list_datasets()}
    assert {"fashion-mnist", "mnist", "cifar10", "cifar100", "digits", "synthetic"} <= set(rows)
    assert rows["digits"]["found"] and rows["digits"]["size"] > 0
    assert set(rows["mnist"]) == {"name", "found", "where", "looked_in", "size", "n_train", "n_test", "description"}


@needs_fashion
@pytest.mark.parametrize("columns", ["80", "200"])
def test_cli_list_shows_fashion_found(columns):
    result = CliRunner().invoke(app, ["list"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if "fashion-mnist" in row)
    assert "│ yes" in line and " MB" in line
    mnist = next(row for row in result.output.splitlines() if "│ mnist" in row)
    assert "│ no" in mnist
    if columns == "200":
        assert str(SYSTEM_FASHION) in line and "Zalando" in line


def test_cli_get_against_local_mirror(tmp_path, mirror):
    folder, url = mirror
    files = write_files(folder, tiny_idx_set())
    args = ["get", "mnist", "--dest", str(tmp_path / "d"), "--base-url", url, "-q"]
    args += [arg for p in files.iterdir() for arg in ("--checksum", f"{p.name}={sha256(p.read_bytes())}")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"mnist: ready in {tmp_path / 'd' / 'mnist'}" in result.output
    assert len(list((tmp_path / "d" / "mnist").iterdir())) == 4
    # Without the checksums the official ones apply: one red line, exit 2.
    result = CliRunner().invoke(app, ["get", "mnist", "--dest", str(tmp_path / "e"), "--base-url", url, "-q"])
    assert result.exit_code == 2 and "size mismatch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_cli_errors_are_one_line_exit_2(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["get", "svhn"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown dataset 'svhn'" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["get", "mnist", "--checksum", "oops"])
    assert result.exit_code == 2 and "FILE=HEX" in result.stderr
    for args in (["--help"], ["get", "--help"], ["list", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output


def test_module_imports_only_torch_numpy_stdlib():
    import subprocess
    import sys

    code = ("import sys, xtra.data; heavy = {'sklearn', 'PIL', 'torchvision', 'rich', 'typer'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
