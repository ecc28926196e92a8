# normkit: the two commands a user needs are `make demo` and `make test`.
# Both install what they need with apt-get (scripts/deps.sh) on a fresh Debian machine.

BUILD     ?= build
ASAN      ?= build-asan
JOBS      ?= $(shell nproc 2>/dev/null || echo 2)
PYTHON    ?= /usr/bin/python3
PREFIX    ?= /usr/local
CONFORMANCE_DIR ?= ../shared/conformance/onnx/node
CMAKE_FLAGS ?=

.PHONY: all build deps test test-unit test-asan test-python test-conformance demo bench-train bench-compare install clean

all: build

deps:
	@bash scripts/deps.sh

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_FLAGS)

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: deps
	$(MAKE) build
	$(MAKE) test-unit
	$(MAKE) test-asan
	$(MAKE) test-python
	$(MAKE) test-conformance

test-unit: build
	cd $(BUILD) && ctest --output-on-failure

# The unit tests again under AddressSanitizer + UBSan (library and tests only).
test-asan:
	cmake -S . -B $(ASAN) -DCMAKE_BUILD_TYPE=Debug -DNK_SANITIZE=ON -DNK_BUILD_TOOLS=OFF
	cmake --build $(ASAN) -j $(JOBS)
	cd $(ASAN) && ctest --output-on-failure

test-python: build
	NORMKIT_LIB=$(CURDIR)/$(BUILD)/libnormkit.so PYTHONPATH=$(CURDIR)/python \
		$(PYTHON) -m pytest -q tests/python

# The runner on damaged copies of a test folder first, then the ONNX suite itself.
test-conformance: build
	@if [ ! -d "$(CONFORMANCE_DIR)" ]; then \
		echo "conformance: $(CONFORMANCE_DIR) not found; set CONFORMANCE_DIR=..."; exit 1; fi
	bash tests/conformance/check_bad_input.sh $(BUILD)/normkit $(CONFORMANCE_DIR)
	$(BUILD)/normkit conformance $(CONFORMANCE_DIR)

demo: deps
	$(MAKE) build
	$(BUILD)/normkit demo --out $(BUILD)/demo

# Training throughput of the default CNN + BN, normkit vs PyTorch (a benchmark, not a test).
bench-train: build
	$(PYTHON) bench/train_throughput.py --normkit $(BUILD)/normkit --rounds 3 --threads $(JOBS)

# normkit vs PyTorch vs oneDNN, interleaved, 1 and 2 threads (a benchmark, not a test; a few min).
# Writes bench/results/latest.{csv,md} and the table in docs/performance.md.
# BENCH_ARGS=--quick for a smoke run (small shapes, bench/results/quick.*).
BENCH_ARGS ?=
bench-compare: deps
	@bash scripts/deps_bench.sh
	$(MAKE) build
	cc -O2 -std=c11 -Wall -Wextra -Werror -fopenmp bench/dnnl_worker.c -o $(BUILD)/dnnl_worker -ldnnl
	$(PYTHON) bench/compare.py --normkit $(BUILD)/normkit --dnnl $(BUILD)/dnnl_worker \
		--python $(PYTHON) $(BENCH_ARGS)

install: build
	cmake --install $(BUILD) --prefix $(PREFIX)
	@if [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi

clean:
	rm -rf $(BUILD) $(ASAN)
