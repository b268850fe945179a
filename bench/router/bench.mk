# bench-router: router-svc vs calling the provider directly (same SDK) vs LiteLLM proxy 1.108.7,
# all in front of the provider emulator, in one run (bench/router/run.py). Included by the root
# Makefile (`-include bench/*/bench.mk`). Knobs: BENCH_ROUTER_ARGS, e.g. "--full" (longer runs)
# or "--no-litellm" (skip the peer; it is installed on first use into
# ~/.cache/parley/bench-venvs/litellm-1.108.7, never into the workspace).
PYTHON ?= .venv/bin/python
BENCH_ROUTER_ARGS ?=

.PHONY: bench-router
bench-router:
	$(PYTHON) bench/router/run.py $(BENCH_ROUTER_ARGS)
