# Two commands, each doing its own set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck pytest browser pgbouncer clean soak

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

# Browser tests drive the machine's Chromium; on CI install Debian's package when it is missing.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$CI" = "true" ]; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || { echo "could not install chromium"; exit 1; }; \
	  else \
	    echo "note: /usr/bin/chromium is missing; browser tests will fail (apt-get install chromium)"; \
	  fi; \
	fi

# The pooled-endpoint tests run through a real PgBouncer in transaction mode (Debian's); on CI install it when
# missing. Elsewhere those tests fail with the install hint rather than skip.
pgbouncer:
	@if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then \
	  if [ "$$CI" = "true" ]; then \
	    echo "installing Debian's pgbouncer for the pooled-endpoint tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null) \
	      || { echo "could not install pgbouncer"; exit 1; }; \
	  else \
	    echo "note: pgbouncer is missing; the pooled-endpoint tests will fail (apt-get install pgbouncer)"; \
	  fi; \
	fi

# The fault scenarios of tests/faults with bigger numbers, for SOAK_SECONDS (not part of `make test`); prints a
# summary table and fails when any invariant broke. SOAK_SEED replays an order; SOAK_ARGS passes more options.
SOAK_SECONDS ?= 300
soak: $(STAMP)
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m tests.faults.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
