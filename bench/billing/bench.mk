# billing-svc benchmark (include from the root Makefile: `include bench/billing/bench.mk`).
#   make bench-billing                                   1M-event reporting tenant (CI size)
#   make bench-billing BENCH_BILLING_ARGS="--tenant-events 10000000"   the 10M figure
BENCH_PYTHON ?= .venv/bin/python
BENCH_BILLING_ARGS ?=

.PHONY: bench-billing
bench-billing:
	$(BENCH_PYTHON) bench/billing/bench_billing.py $(BENCH_BILLING_ARGS)
