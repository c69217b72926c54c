# ajpq — the two commands of a fresh machine are `make test` and `make search`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= tune_configs/digits_demo.yaml
SWEEP ?= tune_configs/sweep_demo.yaml

.PHONY: install test test-slow test-all lint format search sweep bench bench-ddpg bench-search bench-scale bench-sweep bench-zoo bench-baselines bench-equal-wall bench-shared-sweep bench-demo bench-ddpg-few bench-eval bench-eval-cost bench-proxy bench-deploy bench-latency-table bench-data gpu-check mlflow-ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q tests

test-slow: install
	$(BIN)/python -m pytest -q -m slow tests

test-all: install
	$(BIN)/python -m pytest -q -m '' tests

lint: install
	$(BIN)/ruff check ajpq tests bench search.py
	$(BIN)/ruff format --check ajpq tests bench search.py

format: install
	$(BIN)/ruff check --fix ajpq tests bench search.py
	$(BIN)/ruff format ajpq tests bench search.py

search: install
	$(BIN)/ajpq search --config $(CONFIG)
	$(BIN)/ajpq export --config $(CONFIG) --onnx

sweep: install
	$(BIN)/ajpq sweep --config $(SWEEP)

bench: install
	$(BIN)/python bench/bench_core.py
	$(BIN)/python bench/bench_export.py

bench-ddpg: install
	$(BIN)/python bench/bench_ddpg.py

bench-ddpg-few: install
	$(BIN)/python bench/bench_ddpg_few_episodes.py

bench-data: install
	$(BIN)/python bench/bench_data.py

bench-eval: install
	$(BIN)/python bench/bench_eval_throughput.py

bench-eval-cost: install
	$(BIN)/python bench/bench_eval_cost.py

bench-deploy: install
	$(BIN)/python bench/bench_deploy.py

bench-latency-table: install
	$(BIN)/python bench/bench_latency_table.py

bench-proxy: install
	$(BIN)/python bench/bench_proxy.py

# on a machine with a CUDA GPU: the gpu-marked tests and the evaluations-per-minute table
gpu-check: install
	$(BIN)/python bench/gpu_check.py

bench-search: install
	$(BIN)/python bench/bench_search.py

bench-scale: install
	$(BIN)/python bench/bench_scale.py

bench-sweep: install
	$(BIN)/python bench/bench_sweep.py

bench-zoo: install
	$(BIN)/python bench/bench_zoo.py

bench-demo: install
	$(BIN)/python bench/bench_demo.py

bench-baselines: install
	$(BIN)/python bench/joint_vs_baselines.py --out results/fmnist

bench-equal-wall: install
	$(BIN)/python bench/equal_wall.py --table results/fmnist.csv --out results/fmnist_equal_wall

bench-shared-sweep: install
	$(BIN)/python bench/bench_shared_sweep.py

mlflow-ui: install
	@echo "open the link a search printed (experiment runs, Model training view), or"
	@echo "http://127.0.0.1:5000 and switch the top-left toggle to 'Model training'"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1

clean:
	rm -rf $(VENV) .pytest_cache
