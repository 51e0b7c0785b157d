# msp: build, test, demo and benchmark. `make test` and `make demo` install what they need.

PYTHON ?= python3
SWIFT ?= swift
ARCH := $(shell uname -m)
# x86-64 builds target AVX2 machines (x86-64-v3 = Haswell's instruction set), never -march=native.
ifeq ($(ARCH),x86_64)
CPU_FLAGS := -Xswiftc -target-cpu -Xswiftc haswell -Xcc -march=x86-64-v3
endif
RELEASE_FLAGS := -c release -Xswiftc -static-stdlib $(CPU_FLAGS)
LIB := .build/release/libmsp.so
export MSP_LIBRARY_PATH := $(CURDIR)/$(LIB)
# `make install` target; DESTDIR stages the files elsewhere (packaging) without changing msp.pc.
PREFIX ?= /usr/local
# The virtual environment of the llm-compressor integration tests (scripts/llmcompressor_env.sh).
LLMCOMPRESSOR_VENV := .venv-llmcompressor

.PHONY: all deps lib install test test-swift test-abi test-c test-install test-python test-integrations \
	test-wheel demo bench search-bench search-quality fuzz sanitize clean

all: lib

deps:
	@bash scripts/install_deps.sh

lib:
	$(SWIFT) build $(RELEASE_FLAGS)

test: deps lib test-swift test-abi test-c test-install test-python test-integrations test-wheel

test-swift:
	$(SWIFT) test -c release --scratch-path .build-test $(CPU_FLAGS)

test-abi: lib
	$(PYTHON) scripts/check_exports.py include/msp.h $(LIB) Tests/MSPTests/HeaderSignatureTests.swift

test-c: lib
	$(MAKE) -C examples/c run

test-python: lib
	cd python && $(PYTHON) -m pytest -q tests

# include/msp.h, lib/libmsp.so and lib/pkgconfig/msp.pc (version from msp.h; Libs carry an rpath).
install: lib
	PREFIX="$(abspath $(PREFIX))" DESTDIR="$(DESTDIR)" bash scripts/install.sh

# `make install` into a temporary prefix; examples/c built from it with explicit flags and with pkg-config.
test-install: lib
	bash scripts/test_install.sh

# The real llm-compressor's oneshot applies msp plans, in an environment of its own (made once, reused).
test-integrations: lib
	PYTHON=$(PYTHON) bash scripts/llmcompressor_env.sh $(LLMCOMPRESSOR_VENV)
	cd python && ../$(LLMCOMPRESSOR_VENV)/bin/python -m pytest -q tests_llmcompressor

# `pip wheel ./python` gives a manylinux wheel that imports and prunes in a fresh venv without system OpenBLAS.
test-wheel: lib
	PYTHON=$(PYTHON) bash scripts/test_wheel.sh

demo: deps lib
	$(PYTHON) examples/demo.py

bench: deps lib
	$(PYTHON) examples/bench.py

# The search-quality record on synthetic problems with a known optimum (old vs new settings).
search-bench: lib
	$(PYTHON) examples/search_bench.py

# The search-quality record on the demo model (Wanda, 70% / 75% N:8-mix, 3 seeds, 40/80/160
# evaluations, previous vs current settings, fitness on 8 x 128 tokens; several hours of one
# core): out/search_quality.jsonl.
search-quality: deps lib
	$(PYTHON) examples/search_quality.py

# libFuzzer targets in Tests/Fuzz against an ASan + coverage build (.build-fuzz), FUZZ_SECONDS each.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) SWIFT=$(SWIFT) bash scripts/fuzz.sh $(FUZZ_TARGETS)

# Swift tests under ASan, the concurrency tests under TSan, Python tests against an ASan libmsp.so.
sanitize: deps
	SWIFT=$(SWIFT) PYTHON=$(PYTHON) bash scripts/sanitize.sh $(SANITIZERS)

clean:
	rm -rf .build
	$(MAKE) -C examples/c clean
