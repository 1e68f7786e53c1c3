"""Where each sample's bytes are and how to read them: files under a folder, tar members in local
shards, or members of shards on S3.

Shards on S3 are read by ranged GETs through pyarrow's S3FileSystem, built by xtra.storage (the same
credentials, AWS_ENDPOINT_URL and timeouts as study storage), one client per process.
"""

from __future__ import annotations

import functools
import os

import numpy as np


class Listing:
    """One split: labels plus where each sample's bytes are. Subclasses read them."""

    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def read(self, i: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def name(self, i: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def take(self, idx: np.ndarray) -> Listing:  # pragma: no cover - abstract
        raise NotImplementedError


class FolderListing(Listing):
    """Files under ``base``: relative paths as utf-8 bytes in one numpy array."""

    def __init__(self, labels: np.ndarray, base: str, paths: np.ndarray) -> None:
        self.labels, self.base, self.paths = labels, base, paths

    def read(self, i: int) -> bytes:
        with open(self.name(i), "rb") as f:
            return f.read()

    def name(self, i: int) -> str:
        return os.path.join(self.base, self.paths[i].decode())

    def take(self, idx: np.ndarray) -> FolderListing:
        return FolderListing(self.labels[idx], self.base, self.paths[idx])


class ShardListing(Listing):
    """Tar members: (shard, byte offset, size) per sample, read with one seek."""

    def __init__(self, labels: np.ndarray, shards: tuple[str, ...], shard: np.ndarray, offset: np.ndarray,
                 size: np.ndarray, keys: np.ndarray) -> None:
        self.labels, self.shards, self.shard, self.offset, self.size, self.keys = (
            labels, shards, shard, offset, size, keys)

    def read(self, i: int) -> bytes:
        f = open_shard(self.shards[int(self.shard[i])], os.getpid())
        if hasattr(f, "read_at"):  # an S3 object: one ranged GET
            data = f.read_at(int(self.size[i]), int(self.offset[i]))
        else:
            f.seek(int(self.offset[i]))
            data = f.read(int(self.size[i]))
        if len(data) != int(self.size[i]):
            raise OSError(f"short read ({len(data)} of {int(self.size[i])} bytes)")
        return data

    def name(self, i: int) -> str:
        return f"{self.shards[int(self.shard[i])]}:{self.keys[i].decode()}"

    def take(self, idx: np.ndarray) -> ShardListing:
        return ShardListing(self.labels[idx], self.shards, self.shard[idx], self.offset[idx], self.size[idx],
                            self.keys[idx])


class ConcatListing(Listing):
    """Several listings read as one (one loader decodes every split of a collection)."""

    def __init__(self, parts: list[Listing]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.labels = np.concatenate([p.labels for p in parts]) if parts else np.empty(0, dtype=np.int64)

    def _where(self, i: int) -> tuple[Listing, int]:
        k = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.parts[k], i - int(self.starts[k])

    def read(self, i: int) -> bytes:
        part, j = self._where(i)
        return part.read(j)

    def name(self, i: int) -> str:
        part, j = self._where(i)
        return part.name(j)


@functools.lru_cache(maxsize=8)
def open_shard(path: str, pid: int):
    """An open handle per shard and process: a forked loader worker must not share its parent's file
    offset or S3 client, hence the pid in the key."""
    if is_s3(path):
        bucket, key = s3_parts(path)
        return s3_fs(bucket, pid).open_input_file(key)
    return open(path, "rb")  # noqa: SIM115 - kept open on purpose, closed at exit


def is_s3(path: str) -> bool:
    return path.startswith("s3://")


def s3_parts(url: str) -> tuple[str, str]:
    """(bucket, path on the filesystem: bucket/key) of s3://bucket/key."""
    rest = url[len("s3://"):]
    return rest.split("/", 1)[0], rest.rstrip("/")


@functools.lru_cache(maxsize=8)
def s3_fs(bucket: str, pid: int):
    from xtra.storage import Storage

    return Storage.from_uri(f"s3://{bucket}").fs


def s3_diagnosis(url: str) -> str:
    """The storage module's one-line diagnosis of ``url``'s bucket (no such bucket, no credentials,
    endpoint unreachable, denied), or "" when the bucket answers."""
    from xtra.storage import StorageError, check

    try:
        check(f"s3://{s3_parts(url)[0]}", write=False)
    except StorageError as err:
        return f"{url}: {str(err).split(': ', 1)[-1]}"
    return ""


def s3_problem(url: str, e: BaseException) -> str:
    return s3_diagnosis(url) or f"{url}: cannot read ({' '.join(str(e).split())})"
