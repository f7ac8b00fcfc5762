# meshd: `make up` runs the mesh on its built-in default; `make test` is the whole suite.
CARGO ?= cargo
DIR ?= samples/default
# The release build is guided by a profile of meshd serving a mesh's traffic (scripts/pgo.py,
# `make pgo` refreshes it): 20 % fewer instructions and a third fewer instruction-cache misses a
# request. A function changed since the profile was taken builds as without one, silently.
# Cargo does not watch the profile, so a cfg named for its checksum rebuilds when it changes.
PGO_PROFILE := $(CURDIR)/pgo/meshd.profdata
PGO_SUM = $(shell cksum < $(PGO_PROFILE) | cut -d' ' -f1)
RELEASE_ENV = RUSTFLAGS="$(strip $(RUSTFLAGS) -Cprofile-use=$(PGO_PROFILE) -Cllvm-args=-no-pgo-warn-mismatch --cfg=meshd_pgo_$(PGO_SUM))"

.PHONY: up build release pgo test lint fmt unit e2e bench flamegraph bench-instructions clean

up:
	$(RELEASE_ENV) $(CARGO) run --release -p meshd -- up $(DIR)

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
	$(RELEASE_ENV) $(CARGO) build --release -p meshd

# Refresh the release build's profile: an instrumented build, a training run, a merge (~9 minutes).
pgo:
	python3 scripts/pgo.py

# Benchmarks (release build, loopback only, bounded in time).
bench: release
	python3 scripts/bench_startup.py
	python3 scripts/bench_dataplane.py
	python3 scripts/bench_reload.py

# One data-plane row's proxy threads under perf, drawn as a flamegraph (ROW as in the table).
ROW ?= 3
flamegraph: release
	python3 scripts/bench_dataplane.py --profile $(ROW) --svg target/flamegraph-row$(ROW).svg

# Instructions per request under callgrind: a noise-free comparison of builds (valgrind).
bench-instructions: release
	python3 scripts/bench_instructions.py
