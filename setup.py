"""The four code folders of the repository install as one import namespace, ``xtra``.

pyproject.toml holds everything else; only the folder -> package mapping needs code, so that a new
subpackage (``reports/scaling/``, ``xtra/probe/``) is found without editing a list.
"""

from setuptools import find_packages, setup

FOLDERS = {"xtra": "xtra", "xtra.studies": "studies", "xtra.reports": "reports", "xtra.cli": "cli"}

packages = [f"{name}.{sub}" for name, folder in FOLDERS.items() for sub in find_packages(folder)]
setup(packages=sorted([*FOLDERS, *packages]), package_dir=FOLDERS)
