# The README's quick start: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
VENV := .venv
VDI := $(VENV)/bin/vdi
DEMO_CONFIG := etc/demo.toml

.PHONY: setup demo stop test lint format fuzz clean

setup:
	@scripts/setup.sh

demo: setup
	@$(VDI) --config $(DEMO_CONFIG) demo

stop:
	@if [ -x $(VDI) ]; then $(VDI) --config $(DEMO_CONFIG) demo --stop; fi

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The database, placement, session, portal-session, security and gateway tests run a second time on the
# lab's PostgreSQL (tests/fixtures/database.py), as brokers sharing one database do.
POSTGRES_TESTS := tests/broker/db tests/broker/placement tests/broker/test_api.py \
	tests/broker/test_sessions_api.py tests/broker/test_pools_idle_input.py tests/broker/test_pools_lifecycle.py \
	tests/broker/test_revocation.py tests/broker/test_portal_session.py tests/broker/test_leases.py \
	tests/broker/test_concurrency.py tests/broker/test_pool_catalog.py \
	tests/gateway tests/security

test: setup lint
	$(VENV)/bin/python -m pytest
	VDI_TEST_DATABASE=postgresql $(VENV)/bin/python -m pytest $(POSTGRES_TESTS)

# The fuzzers of tests/security/test_fuzz.py with many more examples than `make test` gives them.
fuzz: setup
	VDI_FUZZ_EXAMPLES=$${VDI_FUZZ_EXAMPLES:-5000} $(VENV)/bin/python -m pytest -p no:cacheprovider tests/security/test_fuzz.py

clean: stop
	rm -rf var test-artifacts .pytest_cache .ruff_cache
