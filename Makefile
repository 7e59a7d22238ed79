PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test docs install install-test install-docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e ".[test]"
	touch $@ $(VENV)/.installed

$(VENV)/.installed-docs: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e ".[docs]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-docs: $(VENV)/.installed-docs

demo: install
	$(BIN)/spark-somas train --out out

test: install-test
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The site, into docs/_build/html. Notebooks and executable pages run once and are
# cached in docs/_build/.jupyter_cache, so a rebuild re-executes only what changed;
# -E re-reads every page anyway, so each build reports every warning (as errors).
docs: install-docs
	$(BIN)/python -m sphinx -b html -W --keep-going -E docs docs/_build/html

clean:
	rm -rf $(VENV) build *.egg-info
