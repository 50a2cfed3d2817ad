# `make run` and `make test` work on a fresh machine with only Python 3.11: they create .venv,
# install the pinned requirements and build the extension on first use.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh') setup.py
# glibc returns freed large blocks to the OS by default; every reuse then page-faults and
# dominates memory-bound ops. Keep them (both variables are needed).
export MALLOC_MMAP_THRESHOLD_ ?= 1073741824
export MALLOC_TRIM_THRESHOLD_ ?= 137438953472

.PHONY: run test build bench info clean

$(VENV)/.requirements: requirements.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.built: $(VENV)/.requirements $(SOURCES)
	$(VPY) -m pip install -q --no-build-isolation -e .
	touch $@

build: $(VENV)/.built

# The main job: LeNet-5 on convops convs trained on scikit-learn's bundled digits, next to the
# same model on torch's convs (same init, same batches); prints the test accuracy and the parity
# and writes runs/lenet5-digits/{metrics.jsonl,summary.json,curves.png}.
run: build
	$(VPY) -m convops.train --model lenet5 --dataset digits --compare-torch

test: build
	$(VPY) -m pytest -q tests

bench: build
	$(VPY) -m convops.bench

info: build
	$(VPY) -m convops.info

clean:
	rm -rf build convops/_C*.so *.egg-info $(VENV)/.built
