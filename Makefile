# The pipeline's DAG: install -> data -> search -> evaluate. `make all` runs it end to end.
VENV    ?= .venv
PY      := $(VENV)/bin/python
# The CPU build of torch (a wheel on disk on these machines). On a CUDA machine: make install TORCH=torch
TORCH   ?= torch==2.13.0
SAMPLES ?= 50
SEARCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: all install data search evaluate test test-fast lint bench bench-search bench-race bench-peer bench-floor bench-families clean \
        cluster-up cluster-join submit job-logs cluster-down

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

test: install  # the whole suite, real Ray searches included (CI runs this)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install  # no Ray search: the model, config, dataprep, flags, the search loop's rules
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check plumbing dataprep model tuning tests benchmarks

bench: data  # one epoch's throughput (about a minute)
	$(PY) benchmarks/train_throughput.py

# the search variants at equal wall budget (benchmarks/race.py; about 80 min at these settings)
bench-race: data
	git worktree add -f /tmp/emotion-old d161dce 2>/dev/null || true
	$(PY) benchmarks/race.py --budget-s 240 --subset 4000 --old-code /tmp/emotion-old

# issue #29: the default search against the plain Optuna study a user would write, 50 trials
# each, 3 search seeds, both in PRECISION (docs/measured.md's run: PRECISION=bf16, 31 min on 2
# cores), then one search against its epoch floor: EXP=race-<stamp>-default-s0
PRECISION ?= fp32
bench-peer: data
	$(PY) benchmarks/race.py --variants default optuna --samples 50 --search-seeds 0 1 2 \
	    --precision $(PRECISION)

bench-floor:
	$(PY) benchmarks/epoch_floor.py --experiment $(EXP)

# the model families at the default search's wall budget, 2 seeds (benchmarks/families.py;
# about an hour on 2 cores)
bench-families: data
	$(PY) benchmarks/families.py

# issue #6's figures, each tens of minutes on 2 cores: run one at a time, nothing else running
bench-search: data
	$(PY) benchmarks/search_benchmark.py
	$(PY) benchmarks/ray_overhead.py
	$(PY) benchmarks/asha_vs_fifo.py

# A Ray cluster of your own machines (docs/cluster.md). On the head:
#   make cluster-up            then on each worker: make cluster-join HEAD=<head-ip>:6379
#   make submit STORAGE=s3://bucket/exps SAMPLES=50      make job-logs JOB=raysubmit_...
# token auth for clusters started here (Ray 2.60 turns it on by itself only for local instances);
# the ray CLI needs RAY_AUTH_MODE=token to reach such a cluster
RAY        := RAY_AUTH_MODE=token $(VENV)/bin/ray
RAY_PORT   ?= 6379
DASHBOARD_PORT ?= 8265
DASHBOARD  ?= http://127.0.0.1:$(DASHBOARD_PORT)
STORAGE    ?=
CLUSTER_CPUS ?=

cluster-up: install
	$(RAY) get-auth-token --generate >/dev/null
	$(RAY) start --head --port $(RAY_PORT) --dashboard-host 127.0.0.1 \
	  --dashboard-port $(DASHBOARD_PORT) $(if $(CLUSTER_CPUS),--num-cpus $(CLUSTER_CPUS))
	@echo "token for the dashboard and for workers: $$($(RAY) get-auth-token)"

cluster-join: install
	$(RAY) start --address $(HEAD)

submit: data
	$(RAY) job submit --address $(DASHBOARD) --no-wait -- $(abspath $(PY)) -m tuning.search \
	  --address auto --samples $(SAMPLES) $(if $(STORAGE),--storage '$(STORAGE)') $(SEARCH_ARGS)

job-logs:
	$(RAY) job logs --address $(DASHBOARD) --follow $(JOB)

cluster-down:
	$(RAY) stop

clean:
	rm -rf data/processed artifacts ray_results
