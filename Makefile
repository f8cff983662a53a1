# The README's two commands:   make quickstart   and   make test
#
#   make setup                 create .venv (if missing) and install everything
#   make setup D2=none         ... without the PyPI redistribution of Detectron2 (sal-detectron2);
#                              then install your own build into .venv, e.g.
#                              .venv/bin/pip install --no-build-isolation -e /path/to/detectron2
#   make quickstart            train + evaluate the toy model on CPU (GPU if there is one)
#   make test                  formatting and lint (ruff, 100 columns), then the whole test suite
#                              (and the GPU tests, pytest -m cuda, when CUDA is available)
#   make test-fast             lint, then the tests not marked slow (under 3 minutes on 2 cores)
PYTHON ?= python3.10
VENV ?= .venv
D2 ?= pypi
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(D2)
QUICKSTART_CONFIG ?= configs/Toy/rsp_panoptic_fpn_R_18_toy.yaml
# Two pytest workers, one thread each: on 2 cores this beats one worker with two threads. Whole
# files per worker, in the order of tests/conftest.py (longest runs first).
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder

ifeq ($(D2),pypi)
EXTRAS := d2,test
else ifeq ($(D2),none)
EXTRAS := test
else
$(error D2 must be 'pypi' (default) or 'none', got '$(D2)')
endif

.PHONY: setup quickstart test test-fast clean

setup: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.cfg setup.py pyproject.toml projects/nrd_rsp/modeling/csrc/window_attention.c | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check "pip>=23" "setuptools<80" wheel
	$(PY) -m pip install --disable-pip-version-check "setuptools<80" -e ".[$(EXTRAS)]"
	@$(PY) -c "import detectron2, detectron2.projects.deeplab" 2>/dev/null || { \
	  echo "detectron2 is not importable from $(VENV). With D2=none, install your own build:"; \
	  echo "  $(VENV)/bin/pip install --no-build-isolation -e /path/to/detectron2"; exit 1; }
	@rm -f $(VENV)/.installed-*
	touch $@

quickstart: $(STAMP)
	$(PY) train_net.py --config-file $(QUICKSTART_CONFIG)

test: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS) tests
	@# The GPU tests (marked cuda) run in their own session, with CUDA visible, when there is one.
	@if $(PY) -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then \
	  $(PY) -m pytest -q -m cuda tests; fi

test-fast: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS) -m "not slow and not cuda" tests

clean:
	rm -rf output .pytest_cache
