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
	@echo "[1/3] creating $(VENV) and upgrading pip"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "[2/3] installing torch 2.13.0 (the largest download: a few minutes)"
	$(BIN)/python -m pip install --progress-bar on torch==2.13.0
	@echo "[3/3] installing fedge and its dependencies (flwr, grpcio, onnxruntime, …)"
	$(BIN)/python -m pip install --progress-bar on -e ".[dev]"
	touch $(STAMP)
	@echo "installed: $(BIN)/fedge (activate with 'source $(VENV)/bin/activate' to type just 'fedge')"

demo: $(STAMP)
	$(BIN)/fedge simulate --clients 3 --rounds 5 --partition dirichlet:0.5 --task digits

# Two test processes by default (pytest-xdist), a file per process at a time: the suite is
# mostly subprocesses that wait on each other, so two share two cores well. TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

protos: $(STAMP)
	$(BIN)/python -m fedge.protogen

bench: $(STAMP)
	$(BIN)/python bench/round_overhead.py

compose-e2e:
	bash compose/e2e.sh

lint: $(STAMP)
	$(BIN)/ruff check fedge tests bench examples
	$(BIN)/mypy fedge

clean:
	rm -rf $(VENV)
