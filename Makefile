# `make run` and `make test` each build the environment first: a fresh clone needs nothing else.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev,web,export,postgres,kaggle]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/heritagelens run

# two workers, a file each at a time, one thread each: the waits of one (servers, browsers, subprocesses) overlap
# the other's work, and neither slows the other by sharing threads
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench docs
	$(VENV)/bin/ruff format --check src tests bench docs

bench: $(STAMP)
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
