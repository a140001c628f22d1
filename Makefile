# Two commands, each doing its own set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck pytest browser pgbouncer clean soak bench-peers

# (Re)install only when pyproject.toml changed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/datesync run

test: $(STAMP) browser pgbouncer lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# $(call debian,PATH,PACKAGE,WHAT): tests that drive a program of Debian's (PATH) get it installed on CI when it
# is missing; elsewhere a note says what will fail and how to install it (those tests fail rather than skip).
define debian
	@if [ ! -x $(1) ]; then \
	  if [ "$$CI" = "true" ]; then \
	    echo "installing Debian's $(2) for $(3)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null) \
	      || { echo "could not install $(2)"; exit 1; }; \
	  else \
	    echo "note: $(1) is missing; $(3) will fail (apt-get install $(2))"; \
	  fi; \
	fi
endef

browser:
	$(call debian,/usr/bin/chromium,chromium,the browser tests)

# The pooled-endpoint tests run through a real PgBouncer in transaction mode.
pgbouncer:
	$(call debian,/usr/sbin/pgbouncer,pgbouncer,the pooled-endpoint tests)

# The fault scenarios of tests/faults with bigger numbers, for SOAK_SECONDS (not part of `make test`); prints a
# summary table and fails when any invariant broke. SOAK_SEED replays an order; SOAK_ARGS passes more options.
SOAK_SECONDS ?= 300
soak: $(STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m tests.faults.soak $(SOAK_ARGS)

# PgQueuer and Procrastinate drained in the same window as `datesync bench`'s drain, on the server it uses
# (DATABASE_URL's, else the embedded one), printing datesync's rate over each (not part of `make test`). The peers
# run from their own venv, pinned in bench/peers/requirements.txt; PEERS_ARGS passes options (--rounds, --jobs).
PEERS_VENV  := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed-stamp
$(PEERS_STAMP): bench/peers/requirements.txt
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r bench/peers/requirements.txt
	@touch $(PEERS_STAMP)

bench-peers: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python bench/peers/same_window.py --peers-python $(PEERS_VENV)/bin/python $(PEERS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
