"""wds: shards on S3 (a real S3 protocol server on 127.0.0.1, tests/s3server.py) and from a command
(pipe:): the same images and labels as the local shards, the same pretraining batches, and bad input
refused in one line before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xtra.config import DataConfig
from xtra.data import BadCollection, clear_cache, load_dataset, locate, stream
from xtra.data.collection import PIPE_ENV
from xtra.data.generate import make_imagefolder
from xtra.data.pack import pack

N_CLASSES, PER_CLASS, VAL_PER_CLASS = 3, 12, 4
SHARDS = "train-{000000..000001}.tar"


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    folder = make_imagefolder(tmp_path_factory.mktemp("remote") / "photos", N_CLASSES, PER_CLASS, VAL_PER_CLASS,
                              mean_side=40, seed=2, mixed=True)
    out = tmp_path_factory.mktemp("remote-packed") / "shards"
    pack(folder, out, shard_size=20)
    return out


@pytest.fixture
def bucket(s3_bucket, packed) -> str:
    from xtra.storage import Storage

    st = Storage.from_uri(s3_bucket)
    for f in sorted(packed.iterdir()):
        st.put_file(f, f"in/shards/{f.name}")
    return s3_bucket


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("XTRA_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    yield
    clear_cache()


def _data(name: str, **kw) -> DataConfig:
    return DataConfig(name=name, **{"val_size": 6, "workers": 0, **kw})


def _same_listing(a, b) -> None:
    assert len(a) == len(b) > 0 and np.array_equal(a.labels, b.labels)
    assert all(a.read(i) == b.read(i) for i in range(len(a)))


def test_s3_pack_folder_reads_like_the_local_one(bucket, packed):
    local, remote = _data(f"wds:{packed}"), _data(f"wds:{bucket}/in/shards")
    assert locate(remote) == f"{bucket}/in/shards"
    a, b = stream.splits(local), stream.splits(remote)
    assert a.collection.fingerprint == b.collection.fingerprint  # the pack's checksums, wherever it lives
    assert a.collection.classes == b.collection.classes
    for split in ("train", "val", "test"):
        _same_listing(getattr(a, split), getattr(b, split))
    scanned = stream.splits(_data(f"wds:{packed}/{SHARDS}")).collection.train  # no index: the tar headers
    indexed = a.collection.train
    _same_listing(scanned, indexed)
    assert np.array_equal(scanned.offset, indexed.offset) and np.array_equal(scanned.keys, indexed.keys)
    x, y = load_dataset(local, 32, 3), load_dataset(remote, 32, 3)
    assert torch.equal(x.test.images[:], y.test.images[:]) and torch.equal(x.test.labels, y.test.labels)


def test_s3_stream_batch_equals_the_local_batch(bucket, packed):
    """Two loader workers (their own S3 clients) give bitwise the local stream's batches."""
    batches = []
    for name, workers in ((f"wds:{packed}", 0), (f"wds:{bucket}/in/shards", 2)):
        source = stream.open_stream(_data(name, workers=workers), 32, 3, seed=1, total=48, batch_size=16)
        try:
            batches.append([source.batch(k, 16 * k, 16) for k in range(3)])
        finally:
            source.close()
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_s3_brace_pattern_without_index_is_scanned(bucket, packed):
    a = stream.splits(_data(f"wds:{packed}/{SHARDS}"))
    b = stream.splits(_data(f"wds:{bucket}/in/shards/{SHARDS}"))
    for split in ("train", "val", "test"):  # val shards found beside the train ones, on S3 by one listing
        _same_listing(getattr(a, split), getattr(b, split))
    assert a.collection.fingerprint == b.collection.fingerprint


def test_s3_bad_input_is_one_line(bucket, s3_server):
    from xtra.storage import Storage

    def refused(name: str, match: str) -> None:
        with pytest.raises(BadCollection, match=match) as info:
            locate(_data(name))
        assert "\n" not in str(info.value)

    refused("wds:s3://no-such-bucket-here/in/train-{0..1}.tar", "bucket 'no-such-bucket-here' does not exist")
    refused(f"wds:{bucket}/in/shards/nothing-*.tar", "matches no files")
    refused(f"wds:{bucket}/in/shards/train-{{000000..000005}}.tar", r"shard .*train-000002.tar does not exist")
    refused(f"wds:{bucket}/in/elsewhere", "folder has no manifest.json")
    Storage.from_uri(bucket).write_bytes("in/broken-000.tar", b"\x00garbage" * 100)
    refused(f"wds:{bucket}/in/broken-000.tar", r"s3://.*/in/broken-000.tar: not a readable tar shard")
    Storage.from_uri(bucket).write_bytes("in/shards/train-000001.tar", b"cut short")
    refused(f"wds:{bucket}/in/shards", r"train-000001.tar: 9 bytes, but .*manifest.json says \d+")
    refused("wds:https://example.org/train-{0..1}.tar", r"use a command, e\.g\. wds:pipe:curl")


def test_pipe_shards_are_cached_once_and_read_like_local(packed, tmp_path, monkeypatch):
    monkeypatch.setenv(PIPE_ENV, "1")  # this invocation asked for commands (docs/security.md)
    copy = tmp_path / "src"
    copy.mkdir()
    for k in range(2):
        (copy / f"train-{k:06d}.tar").write_bytes((packed / f"train-{k:06d}.tar").read_bytes())
    piped = _data(f"wds:pipe:cat {copy}/{SHARDS}")
    b = stream.splits(piped).collection.train
    a = stream.splits(_data(f"wds:{packed}/{SHARDS}")).collection.train
    _same_listing(a, b)
    cached = sorted(p.name for p in (tmp_path / "cache" / "shards").iterdir())
    assert len([n for n in cached if n.endswith(".tar")]) == 2 and not [n for n in cached if n.endswith(".part")]
    for f in copy.iterdir():  # the commands now fail: the cache answers
        f.unlink()
    clear_cache()
    _same_listing(a, stream.splits(piped).collection.train)


def test_pipe_bad_input_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(PIPE_ENV, "1")
    def refused(name: str, match: str) -> None:
        with pytest.raises(BadCollection, match=match) as info:
            locate(_data(name))
        assert "\n" not in str(info.value)

    refused(f"wds:pipe:cat {tmp_path}/missing-{{0..1}}.tar", r"wds:pipe:cat .*missing-0.tar: the command failed "
                                                               r"\(exit status 1: cat: .*No such file")
    refused("wds:pipe:echo hello", r"its output \(6 bytes\) is not a tar shard")
    refused("wds:pipe:", "needs a command")
    assert not list((tmp_path / "cache" / "shards").glob("*.tar"))  # nothing cached from a failure
