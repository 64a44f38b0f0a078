# Two commands on a fresh clone: `make demo` and `make test` (`make test-fast` while developing). All create .venv
# when missing (idempotent: the install re-runs only when pyproject.toml or constraints.txt changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Quiet and offline: no telemetry from Prefect or MLflow.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
# Compiled modules are cached (__pycache__/, gitignored) even where the environment turns that off
# (PYTHONDONTWRITEBYTECODE, as on the CI machine): without the cache every test process redoes pytest's assertion
# rewrite of the tests, 2.5 s of the fast set's 9.5 s collection (docs/PERFORMANCE.md, "The test suite").
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup demo test test-fast bench bench-gpu server mlflow-ui worker deploy serve-model ray-cluster \
	ray-cluster-stop ray-hypotheses ray-screenshots clean

# The exact tested set (constraints.txt, pinned) within pyproject.toml's ranges; dev includes the pretrained extra.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fluxflow-train --config configs/quickstart.yaml

# pytest exits 5 when no test is collected: that is not a failure of the suite.
PYTEST_RC := rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# Tests run in PYTEST_WORKERS processes (pytest-xdist; each has its own Prefect test server and temporary folders):
# 2, this 2-core machine's count, since the slow tests spend much of their time waiting on servers and subprocesses.
# PYTEST_WORKERS=0 runs them in this process (for --pdb); PYTEST_ARGS adds options (e.g. -x, -k NAME).
PYTEST_WORKERS ?= 2
PYTEST_PARALLEL = -n $(PYTEST_WORKERS) --dist worksteal

test: $(STAMP)
	@$(PY) -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS); $(PYTEST_RC)

# The developer's loop, under 2 minutes on 2 cores: no real-size training, no servers, no flows (markers in
# pyproject.toml).
test-fast: $(STAMP)
	@$(PY) -m pytest -m "not slow and not e2e" $(PYTEST_PARALLEL) $(PYTEST_ARGS); $(PYTEST_RC)

bench: $(STAMP)
	$(PY) -m bench.run

# On a CUDA machine, under 10 minutes: real-size flow step eager vs compiled (MFU), a 2-step pipeline, torchrun x2.
bench-gpu: $(STAMP)
	PYTHON=$(PY) bash bench/gpu_check.sh

server: $(STAMP)
	bash scripts/server.sh

mlflow-ui: $(STAMP)
	bash scripts/mlflow_ui.sh

worker: $(STAMP)
	bash scripts/worker.sh

deploy: $(STAMP)
	bash scripts/deploy.sh

serve-model: $(STAMP)
	bash scripts/serve_model.sh

# The Ray executor on one machine (docs/DISTRIBUTED.md): the Prefect server, the MLflow UI and a Ray cluster of two
# nodes (node_a, node_b; one CPU each); `make ray-hypotheses` then trains configs/hypotheses.yaml on it, its two
# branches at once, one per node. Ports: FLUXFLOW_PREFECT_PORT, FLUXFLOW_MLFLOW_PORT, FLUXFLOW_RAY_PORT.
RAY_PORT ?= $(or $(FLUXFLOW_RAY_PORT),6379)
ray-cluster: $(STAMP)
	bash scripts/server.sh
	bash scripts/mlflow_ui.sh
	bash scripts/ray_cluster.sh

ray-cluster-stop:
	bash scripts/ray_cluster.sh stop

ray-hypotheses: $(STAMP)
	PREFECT_API_URL=http://127.0.0.1:$(or $(FLUXFLOW_PREFECT_PORT),4200)/api RAY_ADDRESS=127.0.0.1:$(RAY_PORT) \
	    $(VENV)/bin/fluxflow-train --config configs/hypotheses.yaml --set training.executor.kind=ray

# After ray-hypotheses: docs/screenshots/ray_dashboard_{cluster,job}.png and prefect_ray_flow_run.png, in headless
# Chromium (scripts/ray_screenshots.py; needs chromium and chromedriver, as scripts/browser_check.sh).
ray-screenshots: $(STAMP)
	PYTHONPATH=. $(PY) scripts/ray_screenshots.py

# What runs and the README's commands write in the checkout (not .run/: the pid files of servers still running).
clean:
	rm -rf outputs mlruns mlflow.db .pytest_cache generated exported compare_*.csv compare_*.png compare_*.json
	find fluxflow flows tests bench -name __pycache__ -type d -prune -exec rm -rf {} +
