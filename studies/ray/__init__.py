"""Everything that touches Ray, and the only code that imports it (tests/test_imports.py enforces it).

- ``session``: start or join a Ray cluster for one call, Ray's chatter in ``ray.log``, nothing left behind;
- ``trainable``: the Tune trainable, a thin adapter over ``xtra.trial.run_trial``;
- ``workers``: Ray Train data-parallel groups (multi-worker trials, ``xtra pretrain --workers``, the scaling bench);
- ``monitor``: the live table and the Tune callback that records terminal states through ``xtra.trialdir``;
- ``tuner``: a plan becomes a Tune experiment (grid or Optuna search with SQLite storage, trackers).
"""
