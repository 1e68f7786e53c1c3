"""A real S3 protocol server on 127.0.0.1 (moto's server mode) for tests and `xtra bench`.

It is a separate process speaking HTTP, so pyarrow, Ray workers and CLI subprocesses reach it the
way they would reach a cloud bucket: through `AWS_ENDPOINT_URL` and the AWS credential variables
in `server.env`. Nothing here contacts anything but 127.0.0.1. Needs the dev extra (`moto[server]`).

Child processes see the server only if `server.env` is in their environment: export it before
`ray start` / `ray.init` (workers inherit the raylet's environment), or pass it as
`ray.init(runtime_env={"env_vars": server.env})`, or `subprocess.run(..., env={**os.environ, **server.env})`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REGION = "us-east-1"
ACCESS_KEY = "xtra-test-access-key"
SECRET_KEY = "xtra-test-secret-key"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it; a tiny race is acceptable in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: on Linux, get SIGTERM when the parent dies (even by SIGKILL), so a
    killed test run leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class LocalS3Server:
    """`python -m moto.server` on a free 127.0.0.1 port; a context manager that stops it on exit.

    `extra_env` goes to the server process only, e.g. `{"INITIAL_NO_AUTH_ACTION_COUNT": "3"}` makes
    moto enforce IAM credentials after three requests (used to test bad credentials and denials).
    """

    def __init__(self, *, extra_env: dict[str, str] | None = None, start_timeout_s: float = 60.0):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._extra_env = dict(extra_env or {})
        self._timeout = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkstemp(prefix="xtra-moto-", suffix=".log")[1])

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs to reach this server (and nothing else: no profile, no IMDS)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            # Keep the AWS SDK off the instance-metadata address and away from the user's profiles.
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def start(self) -> LocalS3Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(self.env)
        env.update(self._extra_env)
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with code {self._proc.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not listen on {self.endpoint} within {self._timeout:.0f}s: "
                           f"{self._log_tail()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:  # its threaded server can take 10 s to drain on SIGTERM; it holds nothing worth waiting for
                self._proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        self._log.unlink(missing_ok=True)

    def pause(self) -> None:
        """Stop answering (SIGSTOP) while keeping every object: an endpoint cut off from its clients."""
        import signal

        assert self._proc is not None, "the server is not running"
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        assert self._proc is not None, "the server is not running"
        self._proc.send_signal(signal.SIGCONT)

    def create_bucket(self, name: str) -> str:
        """Create a bucket on this server (xtra itself never creates buckets); returns `s3://name`."""
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http", region=REGION,
                               access_key=ACCESS_KEY, secret_key=SECRET_KEY, allow_bucket_creation=True)
        fs.create_dir(name)
        return f"s3://{name}"

    def _log_tail(self) -> str:
        try:
            return " | ".join(self._log.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
