# bench-agent: concurrent voice+video agent sessions through the real LiveKit server.
# Include from the root Makefile (`include bench/agent/bench.mk`). Knobs:
#   BENCH_AGENT_SESSIONS (default 2), BENCH_AGENT_TURNS (default 4), BENCH_AGENT_ARGS (extra flags,
#   e.g. "--fps 15 --width 1920 --height 1080 --model-ttft-ms 300", or "--utterance-wav q.wav" to
#   have the participants say recorded questions instead of espeak-ng's).
PYTHON ?= .venv/bin/python
BENCH_AGENT_SESSIONS ?= 2
BENCH_AGENT_TURNS ?= 4
BENCH_AGENT_ARGS ?=

.PHONY: bench-agent
bench-agent:
	$(PYTHON) bench/agent/bench_agent.py --sessions $(BENCH_AGENT_SESSIONS) \
		--turns $(BENCH_AGENT_TURNS) $(BENCH_AGENT_ARGS)
