# Two commands on a fresh machine: `make demo` and `make test`. Everything is installed into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
KIT := $(VENV)/bin/kit
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo/competition
RUNS_DIR ?= demo/runs
DEMO_TRAIN ?= 600
DEMO_TEST ?= 100

export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install test test-fast demo fixup lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev,sweep,track]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Everything but the tests marked slow (those that train several epochs or spawn processes): at most a minute.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The whole main job on the demo competition: data -> two model families -> blend, stack -> validated, scored submission.
demo: $(STAMP)
	rm -rf $(DEMO_DIR) $(RUNS_DIR)
	$(KIT) synth $(DEMO_DIR) --n-train $(DEMO_TRAIN) --n-test $(DEMO_TEST) --seed 0
	$(KIT) check $(DEMO_DIR)
	$(KIT) folds $(DEMO_DIR) --k 3 --seed 0
	$(KIT) weights import efficientnet-lite0
	# Both pipelines' 3 folds as 6 jobs, 2 at a time (one core each), then their OOF-weighted blend (demo.csv).
	# Everything is tracked in the embedded MLflow store $(RUNS_DIR)/mlflow.db (mlflow ui --backend-store-uri sqlite:///...).
	$(KIT) sweep sweeps/demo.yaml --data $(DEMO_DIR) --out $(RUNS_DIR) --submissions submissions --jobs 2 --track mlflow
	$(KIT) blend $(RUNS_DIR)/demo_regression --data $(DEMO_DIR) --method mean --name demo_regression --force \
		--track mlflow
	$(KIT) blend $(RUNS_DIR)/demo_heatmap --data $(DEMO_DIR) --method mean --name demo_heatmap --force --track mlflow
	# A PCA-ridge stack of the two runs, scored by nested CV against the best blend: the submission.
	$(KIT) stack $(RUNS_DIR)/demo_regression $(RUNS_DIR)/demo_heatmap --data $(DEMO_DIR) --model pca-ridge \
		--name demo_stack --force --track mlflow
	$(KIT) validate submissions/demo_stack.csv --data $(DEMO_DIR)
	$(KIT) submit submissions/demo_stack.csv --data $(DEMO_DIR) --competition made-thousand-facial-landmarks \
		--message "kit demo" --dry-run
	$(KIT) submissions --local --submissions submissions
	# The stack as an offline bundle for a Kaggle code competition (fold weights, kit's wheel, predict.py), measured.
	$(KIT) bundle submissions/demo_stack.json --out demo/bundle --data $(DEMO_DIR) --force
	@echo "== demo scores: MSE on the demo's private test answers (original pixels) =="
	@printf "demo_regression        "; $(KIT) score submissions/demo_regression.csv --data $(DEMO_DIR)
	@printf "demo_heatmap           "; $(KIT) score submissions/demo_heatmap.csv --data $(DEMO_DIR)
	@printf "blend (demo.csv)       "; $(KIT) score submissions/demo.csv --data $(DEMO_DIR)
	@printf "stack (demo_stack.csv) "; $(KIT) score submissions/demo_stack.csv --data $(DEMO_DIR)

LINTED := kit tests benchmarks

fixup: $(STAMP)
	$(PY) -m ruff format $(LINTED)
	$(PY) -m ruff check --fix $(LINTED)

lint: $(STAMP)
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

clean:
	rm -rf demo runs .pytest_cache
