# imagebench: `make demo` and `make test` on a fresh clone do everything (they create .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# This machine's pip is capped at torch<=2.14.1 and torchvision only imports beside its own torch,
# so the pair is pinned here; pyproject.toml keeps open ranges for users.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: install demo test lab ui bench clean-results notebooks lint server server-stop docs

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH_PIN)
	$(PIP) install -e ".[keras,torch,dev,cluster,server]"
	touch $(STAMP)

# MODELS=cnn,resnet50 runs only those models of the demo in both frameworks (the tests run
# `make demo MODELS=cnn` and compare its accuracies with results/demo/leaderboard.csv).
MODELS ?=
demo: $(STAMP)
	$(VENV)/bin/imagebench sweep params/demo.yaml $(if $(MODELS),--models $(MODELS))
	$(VENV)/bin/papermill --no-progress-bar notebooks/leaderboard.ipynb results/demo/leaderboard.ipynb -p experiment demo

# TensorFlow and torch never share a process (importing both can segfault), so the framework
# tests run in their own pytest sessions.
test: $(STAMP)
	$(PY) -m pytest tests --ignore=tests/backends/keras --ignore=tests/backends/torch --durations=40
	$(PY) -m pytest tests/backends/keras
	$(PY) -m pytest tests/backends/torch

# Benchmarks print ratios against a baseline measured in the same run; JSON in results/benchmarks/.
bench: $(STAMP)
	for framework in keras torch; do \
		$(PY) benchmarks/input_pipeline.py --framework $$framework && \
		$(PY) benchmarks/frozen_head_grid.py --framework $$framework && \
		$(PY) benchmarks/suite_overhead.py --framework $$framework && \
		$(PY) benchmarks/papermill_overhead.py --framework $$framework && \
		$(PY) benchmarks/throughput.py --framework $$framework || exit 1; \
	done
	$(PY) benchmarks/keras_cpu.py --rounds 2
	$(PY) benchmarks/halving_wall.py
	$(PY) benchmarks/figure_overlap.py

lab: $(STAMP)
	$(PIP) install -e ".[lab]"
	$(VENV)/bin/jupyter lab notebooks/

ui: $(STAMP)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

# The shared tracking server: PostgreSQL + `mlflow server`, data in .server/ (survives restarts).
server: $(STAMP)
	$(PY) -m imagebench.server start

server-stop: $(STAMP)
	$(PY) -m imagebench.server stop

# The style the code follows (settings in pyproject.toml): pyflakes + pycodestyle through ruff.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/lint-imports

notebooks: $(STAMP)
	$(PY) tools/write_notebooks.py

# The documentation site (mkdocs.yml, pages in docs/; the reference and benchmark pages are generated
# by tools/docs_reference.py) into site/; tests/test_docs.py runs the same strict build.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict -d site
