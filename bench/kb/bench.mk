# kb-svc benchmark (included by the root Makefile). Its own embedded PostgreSQL in a temp dir.
#   make bench-kb                         200k chunks, 100 tenants (a few minutes)
#   make bench-kb BENCH_KB_ARGS=--full    1M chunks
BENCH_KB_PY ?= $(if $(PY),$(PY),.venv/bin/python)
BENCH_KB_ARGS ?=

.PHONY: bench-kb
bench-kb:
	$(BENCH_KB_PY) bench/kb/bench_kb.py $(BENCH_KB_ARGS)
