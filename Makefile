# The README's quick start: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
VENV := .venv
VDI := $(VENV)/bin/vdi
DEMO_CONFIG := etc/demo.toml

.PHONY: setup demo stop test lint format fuzz lock lock-check clean

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
	tests/broker/test_operations.py tests/broker/web/test_admin_pages.py \
	tests/broker/test_centers.py tests/broker/test_reservations.py tests/broker/test_attendance.py \
	tests/broker/test_terminals.py tests/broker/test_network_zones.py tests/broker/test_transfers.py \
	tests/broker/test_concurrency.py tests/broker/test_pool_catalog.py \
	tests/gateway tests/security

# Both passes can run on pytest-xdist workers (`make test TEST_WORKERS=3`): most tests wait on real
# components (guests booting, slapd, sshd, Chromium). --dist loadgroup keeps the tests of a module with
# module-scoped fixtures on one worker (tests/conftest.py); the tests that use a browser run after the
# others, in pytest runs of their own (Playwright keeps an asyncio loop running in its worker). 0 (one
# process) stays the default until each worker has session hosts of its own (docs/development.md,
# "Parallel runs", lists what failed on three workers).
TEST_WORKERS ?= 0
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadgroup

test: setup lint
ifeq ($(TEST_WORKERS),0)
	$(VENV)/bin/python -m pytest $(PYTEST_PARALLEL)
	VDI_TEST_DATABASE=postgresql $(VENV)/bin/python -m pytest $(PYTEST_PARALLEL) $(POSTGRES_TESTS)
else
	$(VENV)/bin/python -m pytest $(PYTEST_PARALLEL) -m "not browser"
	$(VENV)/bin/python -m pytest $(PYTEST_PARALLEL) -m browser
	VDI_TEST_DATABASE=postgresql $(VENV)/bin/python -m pytest $(PYTEST_PARALLEL) -m "not browser" $(POSTGRES_TESTS)
	VDI_TEST_DATABASE=postgresql $(VENV)/bin/python -m pytest $(PYTEST_PARALLEL) -m browser $(POSTGRES_TESTS)
endif

# The fuzzers of tests/security/test_fuzz.py with many more examples than `make test` gives them.
fuzz: setup
	VDI_FUZZ_EXAMPLES=$${VDI_FUZZ_EXAMPLES:-5000} $(VENV)/bin/python -m pytest -p no:cacheprovider tests/security/test_fuzz.py

# requirements.lock: every Python package of .venv pinned with its hashes, installed by scripts/setup.sh with
# --require-hashes. `make lock` after changing pyproject.toml's dependencies keeps the other pins; `make lock
# UPGRADE=1` moves every pin to the newest release the ranges allow. `make lock-check` fails when the lock is
# not what pip-compile makes of pyproject.toml (docs/development.md).
PIP_COMPILE = $(VENV)/bin/pip-compile -q --generate-hashes --allow-unsafe --all-build-deps --extra test \
	--strip-extras --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade,)

lock: setup
	$(PIP_COMPILE) --output-file requirements.lock pyproject.toml

lock-check: setup
	@tmp=$$(mktemp -d) && cp requirements.lock "$$tmp/requirements.lock" && \
	$(PIP_COMPILE) --output-file "$$tmp/requirements.lock" pyproject.toml && \
	diff -u <(grep -v '^#' requirements.lock) <(grep -v '^#' "$$tmp/requirements.lock") && \
	echo "requirements.lock is in step with pyproject.toml"; status=$$?; rm -rf "$$tmp"; exit $$status

clean: stop
	rm -rf var test-artifacts .pytest_cache .ruff_cache
