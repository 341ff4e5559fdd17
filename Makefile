# classeg: setup is idempotent; test and demo depend on it.
#
# Install order matters: torch/torchvision first (from the machine's local wheel files; they declare
# setuptools>=77), then everything else under constraints.txt (petastorm pins setuptools<70). One pip call
# for both ends in ResolutionImpossible; two calls succeed with a resolver warning and everything runs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CACHE := .cache
STAMP := $(VENV)/.classeg-setup

.PHONY: setup test test-unit test-integration demo bench lint clean

setup: $(STAMP)

$(STAMP): Makefile constraints.txt requirements.txt requirements-dev.txt setup.py tools/build_horovod.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -c constraints.txt -r requirements.txt -r requirements-dev.txt
	# MONAI (test-only reference for the losses) depends on torch; --no-deps keeps pip from "resolving" torch
	# against setuptools<70 by downgrading it to an older CUDA build from PyPI.
	$(PIP) install --quiet --no-deps monai==1.6.1
	$(PY) -c "import torch; assert torch.__version__.startswith('2.14.1'), torch.__version__"
	bash tools/build_horovod.sh $(VENV) $(CACHE)/wheels
	$(PIP) install --quiet --no-deps $(CACHE)/wheels/horovod-0.28.1-*.whl
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import torch, torchvision, horovod.torch, petastorm, pyspark, pyarrow; print('setup ok: torch', torch.__version__, 'pyspark', pyspark.__version__, 'pyarrow', pyarrow.__version__)"
	# Debian tools the tests use: shellcheck (bootstrap script), chromium (report screenshot test).
	command -v shellcheck >/dev/null && command -v chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck chromium) || \
	  echo "warning: could not install shellcheck/chromium; the tests that need them will skip"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

demo: setup
	$(VENV)/bin/classeg demo

bench: setup
	$(PY) benchmarks/run_all.py

lint: setup
	$(PY) -m flake8 --select=F lib jobs tests benchmarks
	shellcheck emr/bootstrap.sh tools/build_horovod.sh

clean:
	rm -rf $(VENV) build *.egg-info lib/*.egg-info
