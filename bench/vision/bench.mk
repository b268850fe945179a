# vision-svc benchmark (included by the root Makefile): hash-and-decide cost per 720p/1080p
# I420 frame against imagehash.phash on the same frames, frames/s per core, and peak memory of
# a vision-svc process serving 100 concurrent streams. About 1-2 minutes.
#   make bench-vision                              full run
#   make bench-vision BENCH_VISION_ARGS=--quick    smoke run (seconds)
BENCH_VISION_PY ?= $(if $(PY),$(PY),.venv/bin/python)
BENCH_VISION_ARGS ?=

.PHONY: bench-vision
bench-vision:
	$(BENCH_VISION_PY) bench/vision/bench_vision.py $(BENCH_VISION_ARGS)
