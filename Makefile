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

bench: setup
	$(BIN)/python bench/alarm_latency.py --record
	$(BIN)/python bench/ble_ingest.py --record
	$(BIN)/python bench/zigbee_latency.py --record
	$(BIN)/python bench/rules.py --record
	$(BIN)/python bench/outbox_drain.py --record
	$(BIN)/python bench/provision_import.py --record
	$(BIN)/python bench/fall_eval.py --record

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
