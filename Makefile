PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# --no-compile: pip would byte-compile every module of every package (over a minute
# for JAX, SciPy and the rest); Python compiles and caches the modules it imports.
PIP_INSTALL = pip install --no-compile

.PHONY: demo test test-floor docs lab install install-test install-docs install-notebook clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/$(PIP_INSTALL) -e ".[test]"
	touch $@ $(VENV)/.installed

$(VENV)/.installed-docs: $(BIN)/python pyproject.toml
	$(BIN)/$(PIP_INSTALL) -e ".[docs]"
	touch $@ $(VENV)/.installed

$(VENV)/.installed-notebook: $(BIN)/python pyproject.toml
	$(BIN)/$(PIP_INSTALL) -e ".[notebook]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-docs: $(VENV)/.installed-docs
install-notebook: $(VENV)/.installed-notebook

demo: install
	$(BIN)/spark-somas train --out out

# --max-worker-restart=0: a crashed worker ends the run at once; replacing it, xdist's
# file-by-file scheduling can leave the rest of that file unassigned and wait forever.
test: install-test
	$(BIN)/python -m pytest -n 2 --dist loadfile --max-worker-restart=0

# The lowest versions pyproject.toml allows, in their own venv (.venv-floor):
# constraints-lowest.txt pins each direct dependency at its lower bound, and a
# fast subset runs there (soma steps, simulate, networks, training and
# evaluation with a padded batch, checkpoints and their crash safety, the floors
# themselves, and what the
# suite's shared compilation cache relies on).
FLOOR_VENV := .venv-floor
FLOOR_BIN := $(FLOOR_VENV)/bin
FLOOR_TESTS := tests/test_floor.py tests/test_somas.py tests/test_simulate.py \
	tests/test_training.py tests/test_checkpointing.py tests/test_checkpoint_crashes.py \
	tests/test_shared_compilation_cache.py

$(FLOOR_BIN)/python:
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_BIN)/python -m pip install --upgrade pip

$(FLOOR_VENV)/.installed: $(FLOOR_BIN)/python pyproject.toml constraints-lowest.txt
	$(FLOOR_BIN)/$(PIP_INSTALL) -c constraints-lowest.txt -e ".[test]"
	touch $@

test-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_BIN)/python -m pytest -n 2 --dist loadfile --max-worker-restart=0 $(FLOOR_TESTS)

# The site, into docs/_build/html. Notebooks and executable pages run once and are
# cached in docs/_build/.jupyter_cache, so a rebuild re-executes only what changed;
# -E re-reads every page anyway, so each build reports every warning (as errors).
docs: install-docs
	$(BIN)/python -m sphinx -b html -W --keep-going -E docs docs/_build/html

# JupyterLab on the notebooks (installs the notebook extra first). It prints the
# address to open; LAB_ARGS passes options, e.g. make lab LAB_ARGS="--no-browser --port 8890".
LAB_ARGS ?=
# As root (containers, many cloud notebooks) Jupyter refuses to start without --allow-root.
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: install-notebook
	$(BIN)/jupyter lab --notebook-dir=notebooks $(ROOT_ARGS) $(LAB_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
