# MAIST. `make train` and `make test` set everything up on a machine with only Python.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: install train test test-fast lint bench serve tensorboard clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Train the article's CNN on the generated sample shipped in the package (a few minutes on 2 cores).
train: install
	$(PY) train.py experiment=sample $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

# The inner loop: everything but multi-process runs, real training runs and the browser.
test-fast: install
	$(PY) -m pytest -m "not slow and not browser" $(ARGS)

# ruff: lint and format check (one line length, pyproject.toml); `pre-commit install` runs it on commit.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Benchmarks print ratios measured side by side in one run (not tests).
bench: install
	$(PY) -m benchmarks.bench_decode $(ARGS)
	$(PY) -m benchmarks.bench_loader
	$(PY) -m benchmarks.lightning_overhead
	$(PY) -m benchmarks.bench_export
	$(PY) -m benchmarks.bench_serve

# The drawing page for a trained model: make serve ARGS="ckpt_path=outputs/…/checkpoints/best.ckpt"
serve: install
	$(PY) -m maist.serve $(ARGS)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir outputs

clean:
	rm -rf $(VENV) .pytest_cache
