"""A Ray session for one call: start (or connect to) Ray, keep its output in STUDY_DIR/ray.log, and
leave the process as it was (environment, fd 2, logging, warnings) when the call returns."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray.tune.execution import class_cache as tune_class_cache

from xtra.studies.ray import token_auth_available

# Set for the session only, restored afterwards (a notebook calling xtra.run_study keeps its environment).
SESSION_ENV = {
    "TUNE_GLOBAL_CHECKPOINT_S": "1",  # experiment state saved ~every second: a killed driver can resume
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    "RAY_TRAIN_V2_ENABLED": "1",  # multi-worker trials launch Ray Train inside Tune
    # Probe accuracy (a search's metric) only exists in a trial's last report, not in progress ones.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Tune's default loggers are replaced by the ones the study asks for (xtra.studies.ray.tuner.loggers).
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set defaults for the session; afterwards the environment is exactly as before (Ray itself sets
    variables such as RAY_AUTH_MODE while it starts, and those go too)."""
    saved = dict(os.environ)
    for k, v in values.items():
        os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k in [k for k in os.environ if k not in saved]:
            del os.environ[k]
        for k, v in saved.items():
            if os.environ.get(k) != v:
                os.environ[k] = v


# What a worker on another node is sent (Ray's runtime env): xtra's own switches and locations, where
# the object store is, and the trackers' non-secret settings. Never a secret: Ray writes runtime-env
# variables in plain text into runtime_env_agent.log on every node. Credentials reach a worker from its
# own node (the environment `ray start` ran with, ~/.aws, an instance or pod role): docs/security.md.
WORKER_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
              "AWS_EC2_METADATA_DISABLED", "AWS_CA_BUNDLE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_MODE",
              "WANDB_BASE_URL", "WANDB_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")
NODE_LOCAL = ("XTRA_SCRATCH",)  # each node's own setting (`XTRA_SCRATCH=... ray start`), never the driver's
SECRET_RE = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)
WITHHELD_PREFIXES = ("AWS_", "WANDB_", "MLFLOW_", "XTRA_")


def _worker_env() -> tuple[dict[str, str], list[str]]:
    """(what a worker of a cluster started elsewhere is sent, the names withheld as secrets)."""
    env, withheld = {}, []
    for k, v in os.environ.items():
        if k in NODE_LOCAL or not k.startswith(WITHHELD_PREFIXES):
            continue
        if SECRET_RE.search(k):
            withheld.append(k)
        elif k.startswith("XTRA_") or k in WORKER_ENV:
            env[k] = v
    return env, sorted(withheld)


def secrets_note(withheld: list[str]) -> str:
    """The one line a driver prints when it connects to a cluster while holding secrets."""
    return (f"note: {', '.join(withheld)} not sent to the Ray workers (Ray logs runtime-env variables in plain "
            "text): give each node its own credentials (its environment at `ray start`, a profile, or an "
            "instance role); see docs/security.md")


@contextlib.contextmanager
def _tune_sends_no_secrets() -> Iterator[None]:
    """Ray Tune copies AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN from the driver's
    environment into every trainable's runtime env, which Ray logs in plain text on each node: for the
    session it copies none (a local cluster's workers inherit them from the raylet this process starts;
    a node started elsewhere uses its own credentials)."""
    saved = getattr(tune_class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if saved is not None:
        tune_class_cache.ENV_VARS_TO_PROPAGATE = type(saved)(v for v in saved if not SECRET_RE.search(v))
    try:
        yield
    finally:
        if saved is not None:
            tune_class_cache.ENV_VARS_TO_PROPAGATE = saved


@contextlib.contextmanager
def ray_session(log_dir: Path, address: str | None, env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Start (or connect to) Ray with its chatter in LOG_DIR/ray.log; always shut down and restore.
    ``env``: defaults for the session's environment (the driver's and every worker's)."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "ray.log"
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger = logging.getLogger("ray")
    saved = (list(ray_logger.handlers), ray_logger.propagate, ray_logger.level)
    ray_logger.handlers, ray_logger.propagate = [handler], False
    ray_logger.setLevel(logging.INFO)
    saved_showwarning = warnings.showwarning

    def showwarning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                    line: Any = None) -> None:
        handler.emit(logging.LogRecord("py.warnings", logging.WARNING, filename, lineno,
                                       f"{category.__name__}: {message}", None, None))

    warnings.showwarning = showwarning
    env = {**SESSION_ENV, **(env or {})}
    if address and address != "auto" and token_auth_available():
        # see studies.ray: for an explicit address Ray reads the mode at import and at every call; a
        # cluster it starts or finds itself gets token auth from Ray's own defaults
        env["RAY_AUTH_MODE"] = "token"
    with _environment(env), _tune_sends_no_secrets():
        env_vars, withheld = _worker_env()
        if withheld and address:
            print(secrets_note(withheld), file=sys.stderr, flush=True)
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING,
                                  "configure_logging": False}
        if env_vars and address:
            # A cluster started elsewhere does not have the driver's environment. A local one inherits it
            # (workers are children of the raylet this process starts), and without a runtime_env its
            # pre-started workers can host the trials at once instead of a fresh worker per trial.
            kwargs["runtime_env"] = {"env_vars": env_vars}
        info: dict[str, Any] = {"address": address or "local"}
        # Ray's C++ side writes to the process' stderr (fd 2): send it to ray.log for the session.
        sys.stderr.flush()
        saved_fd = os.dup(2)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        try:
            if address:
                ctx = ray.init(address=address, **kwargs)
            else:
                ctx = ray.init(include_dashboard=False, **kwargs)
            ray_logger.handlers, ray_logger.propagate = [handler], False  # ray.init resets them
            info["gcs_address"] = getattr(ctx, "address_info", {}).get("gcs_address") or \
                ray.get_runtime_context().gcs_address
            info["cluster_cpus"] = ray.cluster_resources().get("CPU", 0)
            info["cluster_gpus"] = ray.cluster_resources().get("GPU", 0)
            yield info
        finally:
            with contextlib.suppress(Exception):
                ray.shutdown()
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            warnings.showwarning = saved_showwarning
            ray_logger.handlers, ray_logger.propagate = saved[0], saved[1]
            ray_logger.setLevel(saved[2])
            handler.close()
