"""Everything that touches Ray, and the only code that imports it (tests/test_imports.py enforces it).

- ``session``: start or join a Ray cluster for one call, Ray's chatter in ``ray.log``, nothing left behind;
- ``trainable``: the Tune trainable, a thin adapter over ``xtra.trial.run_trial``;
- ``workers``: Ray Train data-parallel groups (multi-worker trials, ``xtra pretrain --workers``, the scaling bench);
- ``monitor``: the live table and the Tune callback that records terminal states through ``xtra.trialdir``;
- ``tuner``: a plan becomes a Tune experiment (grid or Optuna search with SQLite storage, trackers).
"""

import os
from pathlib import Path


def token_auth_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").is_file()


def _import_ray() -> None:
    """Import Ray with token authentication on when this machine has a token. Ray turns it on by
    itself for clusters it starts or finds with address="auto", but a driver given an explicit
    HOST:PORT only sends its token if RAY_AUTH_MODE=token is set when ray is first imported (its
    config is read then), and Ray's calls read it again later: xtra.studies.ray.session sets it for the
    length of each session. Here it is set for the import only: the process keeps its environment."""
    if "ray" in __import__("sys").modules or "RAY_AUTH_MODE" in os.environ or not token_auth_available():
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray  # noqa: F401
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)


_import_ray()
