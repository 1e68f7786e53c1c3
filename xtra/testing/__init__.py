"""A fixture for the tests and the benchmarks, apart from the library.

``s3server``: a real S3 protocol server (moto) on 127.0.0.1, for the tests and ``xtra bench``. (The
synthetic studies are the calibration suite's: ``xtra.reports.calibration.synthetic``.)

Core, the study files, the reports and the studies never import this package; only the tests and the
benchmarks do (tests/test_layers.py).
"""
