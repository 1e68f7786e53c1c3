"""The four code folders of the repository install as one import namespace, ``xtra``.

``xtra/studies``, ``xtra/reports`` and ``xtra/cli`` are links to the top-level ``studies/``,
``reports/`` and ``cli/``: the code sits on disk at its import path, so go-to-definition, type
checkers and structure tools resolve every module (tests/test_static.py), while users find the
study files, the reports and the CLI where they always were. A wheel copies the linked files.
pyproject.toml holds everything else.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["xtra", "xtra.*"]))
