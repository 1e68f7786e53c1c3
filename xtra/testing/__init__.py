"""Fixtures for the tests, the benchmarks and the calibration suite, apart from the library.

``s3server``: a real S3 protocol server (moto) on 127.0.0.1, for the tests and ``xtra bench``.
``synthetic``: study directories from a known truth, written through the runner's own writers, for the
report tests, the report benchmark and the calibration suite (``xtra.reports.calibration``).

Core, the study files, the reports and the studies never import this package; only the tests, the
benchmarks and the calibration suite do (tests/test_layers.py).
"""
