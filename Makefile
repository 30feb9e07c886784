# sluice: every command a developer or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
SLUICE := $(VENV)/bin/sluice
STAMP := $(VENV)/.installed
NATIVE_STAMP := $(VENV)/.native-installed
NATIVE_SRC := native/Cargo.toml native/Cargo.lock native/pyproject.toml $(wildcard native/src/*.rs)
# The Rust extension's build cache lives outside the clone, so a fresh clone builds fast.
CARGO_TARGET_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/sluice/cargo-target
export PATH := $(HOME)/.cargo/bin:$(PATH)
PYTEST_ARGS ?=
# Every server the suite runs against.
TEST_STACK := kafka,s3,zipkin,jaeger,hms,trino
# The demo: the sink, and its table queried through the metastore with Trino.
DEMO_STACK := kafka,s3,hms,trino

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11+ or run make PYTHON=python3.x" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# sluice_native (native/, Rust via maturin): the spans table's rows from OTLP bytes.
$(NATIVE_STAMP): $(STAMP) $(NATIVE_SRC)
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup.rs), then rerun make" >&2; exit 1; }
	CARGO_TARGET_DIR=$(CARGO_TARGET_DIR) $(PY) -m pip install -q ./native
	touch $(NATIVE_STAMP)

install: $(STAMP) $(NATIVE_STAMP) ## create .venv and install sluice (and its native part) with its dev tools

lint: install ## ruff + mypy --strict on pipelines/
	$(VENV)/bin/ruff check pipelines tests bench
	$(VENV)/bin/ruff format --check pipelines tests bench
	$(VENV)/bin/mypy

fmt: install ## apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix pipelines tests bench
	$(VENV)/bin/ruff format pipelines tests bench

stack-up: install ## fetch/build and start the local stack (Kafka, S3, Zipkin, Jaeger, Hive Metastore, Trino)
	SLUICE_STACK=$(TEST_STACK) $(SLUICE) dev up

stack-down: ## stop every process of the local stack
	@if [ -x $(SLUICE) ]; then $(SLUICE) dev down; fi

stack-status: install ## what runs where
	SLUICE_STACK=$(TEST_STACK) $(SLUICE) dev status

unit: install ## unit tests only (no servers)
	$(VENV)/bin/pytest tests/unit -q $(PYTEST_ARGS)

test: install lint ## the whole suite against the real stack; the stack is stopped even on failure
	@export SLUICE_STACK=$(TEST_STACK); $(SLUICE) dev up; rc=$$?; \
	if [ $$rc -eq 0 ]; then $(VENV)/bin/pytest -q -ra $(PYTEST_ARGS); rc=$$?; fi; \
	$(SLUICE) dev down; exit $$rc

demo: install ## run the main job end to end on the local stack
	@export SLUICE_STACK=$(DEMO_STACK); $(SLUICE) dev up; rc=$$?; \
	if [ $$rc -eq 0 ]; then $(PY) -m pipelines.demo; rc=$$?; fi; \
	if [ -z "$$SLUICE_KEEP_STACK" ]; then $(SLUICE) dev down; fi; exit $$rc

bench: install ## warehouse benchmark vs Quix Streams (figures: docs/benchmarks.md); stack stays up
	@$(SLUICE) dev up >/dev/null
	$(PY) -m bench.warehouse_e2e --records 1000000 --partitions 4 --runs 2

clean: stack-down ## remove the venv and local state (caches outside the clone stay)
	rm -rf $(VENV) .sluice .mypy_cache .ruff_cache .pytest_cache

.PHONY: help install lint fmt stack-up stack-down stack-status unit test demo bench clean
