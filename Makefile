# The whole set-up on a fresh machine: `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_OUT ?= $(DEMO_DIR)/output

.PHONY: env test demo clean

env: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

test: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests

demo: env
	bash tools/demo.sh "$(PY)" "$(DEMO_DIR)" "$(DEMO_OUT)"

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
