# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test lint mlflow-ui docs-screenshot

# pip would compile every installed file to bytecode one at a time; compileall spreads that over
# the cores (the whole install 239 s -> 191 s on 2 cores, BENCHMARKS.md). A few files of torch's
# own tests are Python 3.12 syntax and never compile, under pip either: hence `|| true`.
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile -e '.[test]'
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $@

install: $(INSTALLED)

demo: $(INSTALLED)
	dvc repro

test: $(INSTALLED) lint
	pytest

lint: $(INSTALLED)
	ruff check .
	ruff format --check .

mlflow-ui: $(INSTALLED)
	@$(BIN)/python -c "from emogan.config import load_params, project_root; \
	  from emogan.tracking import training_runs_page; \
	  print('training runs:', training_runs_page(load_params().mlflow, project_root(), 'http://127.0.0.1:5000'))"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db

# The README's picture of the MLflow UI, shot from this project's store (after `make demo`).
docs-screenshot: $(INSTALLED)
	EMOGAN_README_STORE=sqlite:///$(CURDIR)/mlflow.db $(BIN)/python -m pytest -q -p no:cacheprovider \
	  tests/test_mlflow_ui.py -k readme_screenshot
