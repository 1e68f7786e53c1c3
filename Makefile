# Two commands for a new user: `make demo` and `make test`. Both set up what they need, once.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xtra-installed

.PHONY: setup demo test lint bench clean data-system chromium

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned to the build on this disk; the project's range then installs nothing more.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
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

# The main job: the block-size study on real Fashion-MNIST (24 minutes on 2 cores), its
# report, and a table of the trials. A second run reuses the finished trials.
DEMO_DIR ?= runs/studies/block-size-cpu
demo: setup
	$(VENV)/bin/xtra study run block-size --preset cpu --out $(DEMO_DIR)
	@$(VENV)/bin/xtra study status $(DEMO_DIR)
	@echo "report: $(DEMO_DIR)/report/index.html (self-contained; open it in a browser, offline)"

test: setup chromium
	$(PY) -m pytest -q -x --timeout=900

lint: $(STAMP)
	$(VENV)/bin/ruff check xtra studies cli reports tests

bench: setup
	$(VENV)/bin/xtra bench

clean:
	rm -rf $(VENV) runs .pytest_cache
