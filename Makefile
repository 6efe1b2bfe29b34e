# Two fresh-machine commands (Python 3.11 + git): `make demo` and `make test`.
# Both create .venv and install a CPU torch plus the dependencies on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.goan-installed
# A second environment with every `>=` of requirements.txt pinned to its floor (`make test` runs the suite there too).
FLOORS_VENV := .venv-floors
FLOORS_PY := $(FLOORS_VENV)/bin/python
FLOORS_STAMP := $(FLOORS_VENV)/.goan-installed

.PHONY: demo test bench clean-venv

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

$(FLOORS_STAMP): requirements.txt requirements-dev.txt tests/dependency_floors.py
	test -x $(FLOORS_PY) || $(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_PY) -m pip install --quiet --upgrade pip
	$(FLOORS_PY) tests/dependency_floors.py > $(FLOORS_VENV)/floors.txt
	$(FLOORS_PY) -m pip install --quiet -r requirements-dev.txt -c $(FLOORS_VENV)/floors.txt
	touch $(FLOORS_STAMP)

demo: $(STAMP)
	$(PY) -m goan_core demo

test: $(STAMP) $(FLOORS_STAMP)
	$(PY) -m pytest -q
	@echo "== the same suite on the lowest dependency versions requirements.txt allows =="
	$(FLOORS_PY) -m pip freeze | grep -iE "^(diffusers|transformers|safetensors|av)=="
	$(FLOORS_PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m bench

clean-venv:
	rm -rf $(VENV) $(FLOORS_VENV)
