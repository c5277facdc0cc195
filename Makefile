# Two commands from a fresh clone (README, "Quick start"):
#   make demo   renders the demo with the shipped model into out/demo.mp4
#   make test   runs the tests
# Both first build the project-local virtual environment .venv (target `venv`) when it is missing or older
# than pyproject.toml, and re-use it otherwise. Plain make and python -m venv.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# The dev data (faces, parity fixtures): ../shared beside the checkout; a clone made elsewhere from a local
# checkout finds it beside that checkout (its origin). Tests and the web UI read it through these variables.
ORIGIN := $(shell git config --get remote.origin.url 2>/dev/null)
SHARED ?= $(abspath $(firstword $(wildcard ../shared $(ORIGIN)/../shared) ../shared))
FACES ?= $(or $(FIXTALK_FACES_DIR),$(SHARED)/data/faces)
export FIXTALK_FACES_DIR := $(FACES)
export FIXTALK_PARITY_FIXTURE ?= $(SHARED)/fixtures/edtalk_parity
export FIXTALK_LIA_FIXTURE ?= $(SHARED)/fixtures/lia_parity
PYTEST_ARGS ?= -q
BIN := $(VENV)/bin
STAMP := $(VENV)/.fixtalk-installed

.PHONY: demo test lint venv chromium clean

venv: $(STAMP)

# torch first (the tested release; on this project's machines pip resolves the CPU build), then fixtalk with
# every extra, then the data files read by path (fixtalk/datafiles.py: extracted, never installed).
$(STAMP): pyproject.toml fixtalk/datafiles.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[all]"
	$(BIN)/python -m fixtalk.datafiles --quiet
	$(BIN)/python -m pip check
	@touch $@

demo: $(STAMP)
	@mkdir -p out
	$(BIN)/fixtalk animate --source $(FACES)/images/edtalk__identity_source.jpg \
	    --audio $(FACES)/audio/edtalk__mouth_source.wav --expression happy --pose source --output out/demo.mp4

test: $(STAMP) chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check fixtalk tests scripts
	$(BIN)/mypy

# Chromium for the browser test of the web UI (Playwright drives it and never downloads a browser of its own):
# installed with apt-get when missing and running as root, else the test skips.
chromium:
	@if command -v chromium >/dev/null 2>&1 || [ -n "$$FIXTALK_CHROMIUM" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Chromium for the browser test: apt-get install -y chromium"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: Chromium could not be installed; the browser test will be skipped"; \
	else \
	  echo "Chromium not found and not root: the browser test will be skipped (install your distribution's chromium)"; \
	fi

clean:
	rm -rf $(VENV) out
