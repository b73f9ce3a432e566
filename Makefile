# meshctl developer entry points. `make demo` and `make test` do all their own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The local CPU wheel; pyproject keeps torch a range so cluster users can bring a CUDA build.
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints-cpu.txt
RESULTS ?= results

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[test,demo]'
	touch $@

test: install
	$(BIN)/pytest

demo: install
	$(BIN)/meshctl models

bench: install
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
