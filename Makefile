# The two commands: `make demo` and `make test`. Each bootstraps .venv when missing.
# `make compose-e2e`: compose/ on a real Docker engine (many minutes; not part of `make test`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: demo test protos bench lint clean compose-e2e

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedge simulate --clients 3 --rounds 5 --partition dirichlet:0.5 --task digits

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

protos: $(STAMP)
	$(BIN)/python -m fedge.protogen

bench: $(STAMP)
	$(BIN)/python bench/round_overhead.py

compose-e2e:
	bash compose/e2e.sh

lint: $(STAMP)
	$(BIN)/ruff check fedge tests bench
	$(BIN)/mypy fedge

clean:
	rm -rf $(VENV)
