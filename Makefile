# The two commands of the README. Both install what they need first (Debian packages, the
# Python venv), so they work on a fresh Debian 12 machine (as root).
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: run test fuzz lint typecheck schema audit lock screenshots bench bench-quick classday classday-quick

run:
	scripts/setup run
	$(BIN)/python scripts/run-local --port $(PORT)

test:
	scripts/setup test
	scripts/libvirtd-up
	$(MAKE) --no-print-directory lint typecheck
	$(BIN)/kubekvm export-schema --check
	$(BIN)/pytest
	scripts/audit-deps

# The security fuzz at its full example counts (`make test` runs a quarter of them);
# `make fuzz FUZZ_SCALE=10 FUZZ_RANDOM=1` runs ten times as many, on new examples.
FUZZ_SCALE ?= 1
FUZZ_RANDOM ?= 0
fuzz:
	scripts/setup test
	KUBEKVM_FUZZ_SCALE=$(FUZZ_SCALE) KUBEKVM_FUZZ_RANDOM=$(FUZZ_RANDOM) $(BIN)/pytest -q tests/security/test_fuzz_forms.py tests/security/test_fuzz_graphql.py

lint:
	$(BIN)/ruff check src kubekvm_demo tests scripts/run-local $(wildcard benchmarks)

typecheck:
	$(BIN)/mypy

schema:
	$(BIN)/kubekvm export-schema --out schema.graphql

# pip-audit over the lock files: fails on a known vulnerability, and when it cannot look one up.
audit:
	scripts/audit-deps

# Re-resolve the lock files (requirements/*.txt) after a change to pyproject.toml's dependencies;
# `make lock ARGS=--upgrade` takes the newest versions allowed.
lock:
	scripts/lock $(ARGS)

# The README's screenshots (docs/screenshots/*.png), taken by the browser tests; a plain test
# run writes them to tests/artifacts/screenshots instead and never touches the tracked files.
screenshots:
	scripts/setup test
	KUBEKVM_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(BIN)/pytest -q tests/pages/test_screenshots.py

bench:
	scripts/setup test
	scripts/libvirtd-up
	$(BIN)/python -m benchmarks

bench-quick:
	scripts/setup test
	scripts/libvirtd-up
	$(BIN)/python -m benchmarks --quick

# The class day (benchmarks/classday/): the whole system under a sign-in burst and faults.
# It boots QEMU guests: on a shared machine, run it under `flock /tmp/kubekvm-qemu.lock`.
classday:
	scripts/setup test
	scripts/libvirtd-up
	$(BIN)/python -m benchmarks.classday

classday-quick:
	scripts/setup test
	scripts/libvirtd-up
	$(BIN)/python -m benchmarks.classday --quick
