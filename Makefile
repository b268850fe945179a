# Parley: two commands matter. `make demo` runs the platform's main job; `make test` sets up
# a fresh machine and runs the whole suite. Everything else is a building block.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST := .venv/bin/pytest

.PHONY: demo test setup lint typecheck proto check-proto up down status unit integration e2e \
        bench bench-runtime

demo: setup
	$(PY) -m parley_demo

test: setup lint typecheck
	$(PYTEST) -q -p no:cacheprovider

setup:
	@./scripts/setup.sh

lint:
	.venv/bin/ruff check .
	./scripts/check_proto.sh

typecheck:
	.venv/bin/mypy libs/parley-runtime/src tools/devstack/src $(wildcard services/*/src) \
	  $(wildcard tools/provider-emulator/src) $(wildcard tools/demo/src)

proto:
	./scripts/gen_proto.sh

check-proto:
	./scripts/check_proto.sh

up: setup
	$(PY) -m parley_devstack up

down:
	$(PY) -m parley_devstack down

status:
	$(PY) -m parley_devstack status

unit:
	$(PYTEST) -q -m unit

integration:
	$(PYTEST) -q -m integration

e2e:
	$(PYTEST) -q -m e2e tests/e2e

bench-runtime:
	$(PY) bench/runtime/run.py

-include bench/*/bench.mk
