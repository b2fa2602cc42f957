# Anju: `make demo` and `make test` each set everything up first (see scripts/setup.sh).
.PHONY: setup demo test lint bench clean

VENV := .venv
BIN := $(VENV)/bin

setup:
	@scripts/setup.sh

demo: setup
	$(BIN)/anju demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python firmware/typecheck.py  # the device firmware against MicroPython's ESP32 stubs

test: lint
	$(BIN)/python -m pytest

bench: setup  # every bench/ script with --record, then the summary at the top of docs/BENCHMARKS.md
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
