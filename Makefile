# `make run` and `make test` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# OpenMP's default busy-wait makes torch crawl when another process holds the other core.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test bench install clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/codesign search --device pixel8 --budget 10ms

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/codesign bench kernels

clean:
	rm -rf $(VENV) .pytest_cache
