# Two commands for a fresh machine: `make run` and `make test`. Each builds .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# `make run PORT=8800` (and HOST=) serve elsewhere; quickstart prints client lines for the same URL.
HOST ?= 127.0.0.1
PORT ?= 8765

.PHONY: install run test typecheck lint bench clean

# pip's own lines (one per package it collects and installs) show progress: a first install takes minutes on a
# slow machine, and a silent one looks hung. `make install` (and so run and test) prints them once.
$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> installing agent-rooms and its test tools into $(VENV) (pip prints each package)"
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test]'
	touch $(STAMP)
	@echo "==> installed: $(abspath $(BIN))/agent-rooms"

install: $(STAMP)

# make cannot change the calling shell's PATH, and writing a shim outside the checkout unasked is a surprise
# to undo: so `run` prints the one line that puts `agent-rooms` on PATH, and the README shows it too.
# `run` passes serve no public-mode flags, so serve binds loopback only: a HOST beyond it is refused here, by
# serve's own rule, before quickstart prints client lines for an address nothing will answer at.
run: $(STAMP)
	@$(BIN)/python -c 'import sys; from agent_rooms_mcp.public import is_loopback; sys.exit(not is_loopback(sys.argv[1]))' '$(HOST)' \
	  || { echo 'make run serves on loopback only: HOST=$(HOST) is beyond it, where the hub needs public mode (--public-url https://HUB and TLS); start it with agent-rooms serve --http, as the README'"'"'s "Public mode" shows' >&2; exit 2; }
	$(BIN)/agent-rooms quickstart --http http://$(HOST):$(PORT)/mcp
	@echo
	@echo "To type agent-rooms in any shell, put it on PATH (add the line to ~/.bashrc to keep it):"
	@echo '  export PATH="$(abspath $(BIN)):$$PATH"'
	@echo
	$(BIN)/agent-rooms serve --http --host $(HOST) --port $(PORT)

# The suite runs on TEST_WORKERS processes (pytest-xdist): most tests wait on subprocesses and sockets, so more
# workers than cores pay. --dist loadgroup keeps each xdist_group (tests that share a one-time install or look
# at every process on the host) on one worker. `make test TEST_WORKERS=0` runs it in this process alone.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# mypy rather than pyright: it installs from pip like everything else here (pyright needs Node), and its
# pydantic plugin checks model constructors. Its settings live in pyproject.toml's [tool.mypy].
typecheck: $(STAMP)
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info
