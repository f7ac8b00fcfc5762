# meshd: `make up` runs the mesh on its built-in default; `make test` is the whole suite.
CARGO ?= cargo
DIR ?= samples/default

.PHONY: up build release test lint fmt unit e2e bench bench-instructions clean

up:
	$(CARGO) run --release -p meshd -- up $(DIR)

build:
	$(CARGO) build -p meshd

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# The e2e tests drive the real binary: build it first, then run everything.
test: lint build
	$(CARGO) nextest run --workspace --no-fail-fast

clean:
	$(CARGO) clean

release:
	$(CARGO) build --release -p meshd

# Benchmarks (release build, loopback only, bounded in time).
bench: release
	python3 scripts/bench_startup.py
	python3 scripts/bench_dataplane.py
	python3 scripts/bench_reload.py

# Instructions per request under callgrind: a noise-free comparison of builds (valgrind).
bench-instructions: release
	python3 scripts/bench_instructions.py
