# Quick start: `make demo` then `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt
STAMP_BASE := $(VENV)/.base-installed
STAMP_TEST := $(VENV)/.test-installed
STAMP_QUALITY := $(VENV)/.quality-installed

.PHONY: demo test test-all quality browser bench app clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned, so that nothing can pull a multi-GB CUDA build (see constraints.txt)
$(STAMP_BASE): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -q torch==2.13.0
	$(PIP) -q -e ".[models]"
	touch $@

$(STAMP_TEST): $(STAMP_BASE)
	$(PIP) -q -e ".[test]"
	touch $@

$(STAMP_QUALITY): $(STAMP_BASE)
	$(PIP) -q -e ".[quality]"
	touch $@

# Browser tests use the system Chromium (Playwright's own browser download cannot work offline).
# Installed when the machine allows (root + Debian); otherwise those tests skip with a reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "note: chromium not installed; browser tests will be skipped"

demo: $(STAMP_BASE)
	$(BIN)/textsr demo --out demo-output

test: $(STAMP_TEST) browser
	$(BIN)/python -m pytest -q -n 2 tests

test-all: $(STAMP_TEST) browser
	$(BIN)/python -m pytest -q -n 2 --runslow tests

# lint (ruff: pycodestyle, pyflakes, import order, bugbear, pyupgrade) and type check (mypy); settings in pyproject.toml
quality: $(STAMP_QUALITY)
	@status=0; $(BIN)/ruff check . || status=1; $(BIN)/mypy || status=1; exit $$status

clean:
	rm -rf $(VENV) demo-output .pytest_cache .hypothesis
