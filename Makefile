# The pipeline's DAG: install -> data -> search -> evaluate. `make all` runs it end to end.
VENV    ?= .venv
PY      := $(VENV)/bin/python
# The CPU build of torch (a wheel on disk on these machines). On a CUDA machine: make install TORCH=torch
TORCH   ?= torch==2.13.0
SAMPLES ?= 50
SEARCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: all install data search evaluate test lint bench bench-search clean

all: data search evaluate  # in this order (no -j)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

data: install
	$(PY) -m dataprep

search: data
	$(PY) -m tuning.search --samples $(SAMPLES) $(SEARCH_ARGS)

evaluate: install
	$(PY) -m tuning.evaluate_best

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check plumbing dataprep model tuning tests benchmarks

bench: data  # one epoch's throughput (about a minute)
	$(PY) benchmarks/train_throughput.py

# issue #6's figures, each tens of minutes on 2 cores: run one at a time, nothing else running
bench-search: data
	$(PY) benchmarks/search_benchmark.py
	$(PY) benchmarks/ray_overhead.py
	$(PY) benchmarks/asha_vs_fifo.py

clean:
	rm -rf data/processed artifacts ray_results
