# Two commands do all set-up on a fresh machine (Python 3.11 with pip, nothing else):
#   make demo   - create .venv, install, run the indexing job on the embedded default, search it
#   make test   - create .venv, install with test extras, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Ray's CLI and library must agree on token auth (field notes): set it explicitly.
export RAY_AUTH_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test test-slow test-gpu install install-test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The pinned CPU build first, so nothing later pulls a CUDA build of torch.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[tiny]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(PY) jobs/demo.py

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -q -m slow

# Needs a CUDA GPU and a CUDA build of torch in $(VENV) (the pinned CPU build skips every test).
test-gpu: $(VENV)/.installed-test
	$(PY) -m pytest -q -m gpu tests/test_kernels.py tests/test_encoder.py

clean:
	rm -rf $(VENV) demo-output bench-output .pytest_cache
