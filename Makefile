# tern — thin wrapper around CMake/CTest. The real build is CMakeLists.txt.
#
#   make / make build   install missing build packages, configure, build
#   make test           also install the test peers (postfix, haproxy,
#                       dovecot...), build, run the whole suite (ctest)
#   make asan           ASan+UBSan Debug build of everything, then ctest
#   make fuzz           clang libFuzzer build; run each target FUZZ_SECONDS
#   make bench          build and run the benchmark drivers
#   make run            build and run tern serve (127.0.0.1:2525, ./mail)
#   make install        install into PREFIX (default /usr/local)
#   make checksrc       the src/core source checks alone
#   make clean          remove the build directories
#
# Extra CMake settings: make test CMAKE_ARGS="-DTERN_WERROR=ON"
# Skip the package check: make test SKIP_DEPS=1
# Packages: `make`, `make run`, `make install` and `make fuzz` install
# only what building needs (scripts/install-deps --build); the test peers,
# postfix among them (it replaces any other MTA), come only with
# `make test` and `make asan` (--build --test).

BUILD       ?= build
ASAN_BUILD  ?= build-asan
FUZZ_BUILD  ?= build-fuzz
BUILD_TYPE  ?= RelWithDebInfo
JOBS        ?= 2
CMAKE       ?= cmake
CTEST       ?= ctest
CMAKE_ARGS  ?=
CTEST_ARGS  ?=
FUZZ_CC     ?= clang
FUZZ_SECONDS ?= 60
FUZZ_JOBS   ?= 2
PREFIX      ?= /usr/local
SKIP_DEPS   ?=

MAKEFLAGS += --no-print-directory

ASAN_ENV = ASAN_OPTIONS=detect_leaks=1 \
           UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

.PHONY: all build deps test-deps test asan fuzz bench run install checksrc \
        clean

all: build

deps:
ifeq ($(SKIP_DEPS),)
	@bash scripts/install-deps --build
endif

test-deps:
ifeq ($(SKIP_DEPS),)
	@bash scripts/install-deps --build --test
endif

define configure_and_build
	$(CMAKE) -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_ARGS)
	$(CMAKE) --build $(BUILD) -j $(JOBS)
endef

build: deps
	$(configure_and_build)

test: test-deps
	$(configure_and_build)
	$(CTEST) --test-dir $(BUILD) --output-on-failure -j $(JOBS) $(CTEST_ARGS)

asan: test-deps
	$(CMAKE) -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug \
	  -DTERN_SANITIZE=address,undefined -DTERN_BUILD_BENCH=OFF $(CMAKE_ARGS)
	$(CMAKE) --build $(ASAN_BUILD) -j $(JOBS)
	$(ASAN_ENV) $(CTEST) --test-dir $(ASAN_BUILD) --output-on-failure \
	  -j $(JOBS) $(CTEST_ARGS)

fuzz: deps
	$(CMAKE) -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=$(FUZZ_CC) \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTERN_BUILD_FUZZ=ON \
	  -DTERN_BUILD_TESTS=OFF -DTERN_BUILD_BENCH=OFF $(CMAKE_ARGS)
	$(CMAKE) --build $(FUZZ_BUILD) -j $(JOBS)
	FUZZ_JOBS=$(FUZZ_JOBS) bash scripts/run-fuzz $(FUZZ_BUILD) $(FUZZ_SECONDS)

bench: build
	@set -e; found=0; \
	for b in $(BUILD)/bench/bench_*; do \
	  [ -x "$$b" ] && [ -f "$$b" ] || continue; \
	  found=1; echo "== $$b"; "$$b"; \
	done; \
	[ $$found = 1 ] || echo "bench: no benchmark drivers (bench/bench_*.c) yet"

run: build
	@echo "make run: tern serve on 127.0.0.1:2525 and [::1]:2525, Maildir ./mail (Ctrl-C stops)"
	$(BUILD)/src/cli/tern serve

install: build
	$(CMAKE) --install $(BUILD) --prefix $(PREFIX)

checksrc:
	@bash scripts/checksrc

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(FUZZ_BUILD)
