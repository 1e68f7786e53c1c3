# Two commands for a new user: `make demo` and `make test`. Both set up what they need, once.
PYTHON ?= python3
VENV ?= .venv
PIP_VERSION := 26.3
PY := $(VENV)/bin/python
# CUDA=1 installs pylock.cuda.toml (PyPI's CUDA build of torch, xformers) instead of pylock.toml (CPU).
CUDA ?=
LOCK := pylock$(if $(CUDA),.cuda).toml
STAMP := $(VENV)/.xtra-installed$(if $(CUDA),-cuda)
# This project's machines keep copies of locked wheels here: a copy with the locked sha256 installs
# from disk, every other wheel from the URL its lock names. Folders that do not exist are skipped.
LOCAL_WHEELS ?= /opt/wheels /opt/pypi/files

.PHONY: setup demo test test-fast test-latest lock lint bench clean data-system chromium slurm

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "pip==$(PIP_VERSION)"

# Exactly what was tested: every package, transitive ones included, from the lock (PEP 751, one
# wheel per package with its sha256, CPython 3.11 on Linux x86_64), then the project itself,
# editable, built without reaching the index. A second `make` installs nothing. The lock names
# public URLs; $(VENV)/pylock.toml is the same lock with the wheels found in LOCAL_WHEELS named by
# their path (pip checks every sha256 either way). The bytecode is compiled afterwards on every core
# (pip compiles file by file: a fresh `make setup` took 87 s on 2 cores with it, 54 s this way),
# skipping the packages' own test suites, which nothing imports; it ignores the few files written for
# newer Pythons than the venv's (their syntax errors are why `|| true`).
$(STAMP): $(LOCK) pyproject.toml setup.py | $(PY)
	$(PY) -m pip install -q "pip==$(PIP_VERSION)"
	$(PY) scripts/lock.py from-disk $(LOCK) $(VENV)/pylock.toml $(LOCAL_WHEELS)
	$(PY) -m pip install -q --no-compile -r $(VENV)/pylock.toml
	$(PY) -m pip install -q --no-compile --no-deps --no-build-isolation -e .
	$(PY) -m compileall -qq -j 0 -x '/tests/' $$($(PY) -c "import sysconfig; print(sysconfig.get_path('purelib'))") || true
	touch $(STAMP)

setup: $(STAMP) data-system

# Debian's packaged Fashion-MNIST (real data, no download at run time).
data-system:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) && \
		echo "installed Debian's dataset-fashion-mnist"; \
	else echo "skipping dataset-fashion-mnist: needs apt-get as root (or run: xtra data get fashion-mnist)"; fi

# Headless Chromium renders reports in tests.
chromium:
	@if command -v chromium >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) && echo "installed chromium"; \
	else echo "skipping chromium: needs apt-get as root (report rendering tests will skip)"; fi

# A real Slurm (munge, slurmctld, slurmd) for the Slurm tests, which start their own one-node cluster.
slurm:
	@if command -v slurmctld >/dev/null && command -v munged >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null)) && \
		echo "installed slurm-wlm and munge"; \
	else echo "skipping slurm: needs apt-get as root (the Slurm tests will skip)"; fi

# The main job: the block-size study on real Fashion-MNIST (9 trials, ~11.5 minutes on a fresh clone on 2 cores, setup included:
# docs/results-cpu.md; probing vs pretraining: docs/bench-cpu-2core-probe.md), its
# report, and a table of the trials. A second run reuses the finished trials.
DEMO_DIR ?= runs/studies/block-size-cpu
demo: setup
	$(VENV)/bin/xtra study run block-size --preset cpu --out $(DEMO_DIR)
	@$(VENV)/bin/xtra study status $(DEMO_DIR)
	@echo "report: $(DEMO_DIR)/report/index.html (self-contained; open it in a browser, offline)"

# Two pytest workers, a test module each at a time (--dist loadfile keeps a module's fixtures in one
# process): much of an end-to-end test is waiting on Ray, Slurm or a subprocess, so two share the CPUs.
# Every test starts its own Ray, S3 server and Slurm cluster on free ports and in its own directories.
TEST_WORKERS ?= 2
test: setup chromium slurm
	$(PY) -m pytest -q -x --timeout=900 -n $(TEST_WORKERS) --dist loadfile --durations=15

# The inner loop: no Ray cluster, no Slurm, no servers, under two minutes.
test-fast: setup
	$(PY) -m pytest -q -x --timeout=300 -m "not slow" -n $(TEST_WORKERS) --dist loadfile

# Deliberate upgrades: `make lock` re-resolves pylock.toml from pyproject.toml's ranges, then
# pylock.cuda.toml from PyPI alone with the CPU lock's versions held (commit both after `make test`); `make test-latest` runs the suite in a scratch environment built from
# the newest releases those ranges allow, so a breaking release is found by someone who asked.
lock: | $(PY)
	$(PY) -m pip install -q "pip==$(PIP_VERSION)"
	$(PY) scripts/lock.py

LATEST ?= .venv-latest
test-latest: data-system chromium
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q "pip==$(PIP_VERSION)"
	$(LATEST)/bin/python -m pip install -q "torch==2.13.0"
	# torch stays the CPU build the lock pins (a newer torch here is a multi-GB CUDA build); all else moves
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager "torch==2.13.0" -e '.[dev]'
	$(LATEST)/bin/python -m pip freeze > $(LATEST)/freeze.txt
	XTRA_UNLOCKED=1 $(LATEST)/bin/python -m pytest -q --timeout=900 -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check xtra studies cli reports tests

bench: setup
	$(VENV)/bin/xtra bench

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
