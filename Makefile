# Two commands on a fresh clone:  `make demo` (the main job, embedded)  and  `make test` (the whole suite).
# Everything installs from this repository's own files: pyproject.toml pinned by requirements.lock.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install tools clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $@

# Debian packages some tests use: docker-compose validates docker-compose.yml, chromium runs the dashboard
# test. Installed when we are root with apt and they are missing; otherwise those tests skip with a reason.
DEBIAN_TOOLS := docker-compose chromium

tools:
	@missing=""; for tool in $(DEBIAN_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: not installed:$$missing; the tests that need them will be skipped"; fi; \
	fi

demo: $(STAMP)
	$(BIN)/hep2 demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports  # the layers contract in pyproject.toml (docs/architecture.md)

test: $(STAMP) tools lint
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
