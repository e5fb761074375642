# Two commands on a fresh machine: `make demo` and `make test`. Everything is installed into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KIT := $(VENV)/bin/kit
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo/competition
RUNS_DIR ?= demo/runs

export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install test test-fast demo fixup lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(KIT) synth $(DEMO_DIR) --n-train 600 --n-test 100 --seed 0
	$(KIT) check $(DEMO_DIR)
	$(KIT) folds $(DEMO_DIR) --k 3 --seed 0

fixup: $(STAMP)
	$(PY) -m ruff format kit tests
	$(PY) -m ruff check --fix kit tests

lint: $(STAMP)
	$(PY) -m ruff check kit tests

clean:
	rm -rf demo runs .pytest_cache
