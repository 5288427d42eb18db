# MAIST. `make train` and `make test` set everything up on a machine with only Python.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
XDIST  ?= -n auto --maxprocesses 2

.PHONY: help install train test test-fast lint bench serve tensorboard clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 22

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## set up .venv with the project and its test tools

# Train the article's CNN on the generated sample shipped in the package (a few minutes on 2 cores).
train: install  ## train the article's CNN on the shipped sample (a few minutes; ARGS=… adds overrides)
	$(PY) train.py experiment=sample $(ARGS)

# Two pytest workers (pytest-xdist): most tests wait on one core for a subprocess or a short run.
test: install  ## the whole test suite (about 6 minutes on 2 cores)
	$(PY) -m pytest $(XDIST) $(ARGS)

# The inner loop: everything but multi-process runs, real training runs and the browser.
test-fast: install  ## the inner loop: no multi-process runs, real training runs, browser or real handwriting
	$(PY) -m pytest $(XDIST) -m "not slow and not browser and not real_data" $(ARGS)

# ruff: lint and format check (one line length, pyproject.toml); `pre-commit install` runs it on commit.
lint: install  ## ruff lint and format check, as CI runs it
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Benchmarks print ratios measured side by side in one run (not tests).
bench: install  ## the benchmarks: ratios measured side by side
	$(PY) -m benchmarks.bench_decode $(ARGS)
	$(PY) -m benchmarks.bench_loader
	$(PY) -m benchmarks.lightning_overhead
	$(PY) -m benchmarks.bench_export
	$(PY) -m benchmarks.bench_serve

# The drawing page for a trained model: make serve ARGS="ckpt_path=outputs/…/checkpoints/best.ckpt"
serve: install  ## the drawing page: make serve ARGS="ckpt_path=outputs/…/checkpoints/best.ckpt"
	$(PY) -m maist.serve $(ARGS)

tensorboard: install  ## TensorBoard over outputs/
	$(VENV)/bin/tensorboard --logdir outputs

clean:  ## remove .venv and pytest's cache
	rm -rf $(VENV) .pytest_cache
