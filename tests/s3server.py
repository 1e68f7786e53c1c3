"""Pytest fixtures: a real S3 protocol server (moto) on 127.0.0.1 for the whole test session.

`s3_server` starts it once and exports `server.env` (credentials, region, `AWS_ENDPOINT_URL`,
instance metadata off, no user profiles) into os.environ, so everything started later inherits it:
subprocesses, `ray.init()`'s local cluster, `ray start` run from a test. `s3_bucket` gives each test
its own fresh bucket as an `s3://` URI.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from xtra.testing.s3server import LocalS3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    pytest.importorskip("moto", reason="the S3 tests need the dev extra: pip install -e '.[dev]'")
    with LocalS3Server() as server, pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            mp.delenv(key)  # the user's own profile or endpoint must not leak into the tests
        for key, value in server.env.items():
            mp.setenv(key, value)
        yield server


@pytest.fixture
def s3_bucket(s3_server: LocalS3Server) -> str:
    """`s3://<fresh bucket>` on the session's server."""
    return s3_server.create_bucket(f"xtra-{secrets.token_hex(6)}")
