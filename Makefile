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

# Debian's docker-compose validates docker-compose.yml in a test; installed when we are root and it is missing.
tools:
	@command -v docker-compose >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
	  || echo "note: docker-compose not installed; the compose validation test will be skipped"; }

demo: $(STAMP)
	$(BIN)/hep2 demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) tools lint
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
