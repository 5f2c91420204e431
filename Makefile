# The whole set-up on a fresh machine: `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_OUT ?= $(DEMO_DIR)/output

.PHONY: env lock test demo clean

env: $(STAMP)

# exact versions and hashes (requirements-dev.lock holds requirements.lock's pins plus the test tools); pip refuses
# any file whose hash is not in the lock
$(STAMP): requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	touch $(STAMP)

# refresh the lock files after editing requirements*.txt (needs uv: pip install uv); one resolution for every
# platform (Linux x86_64 and aarch64 with the nvidia-* wheels, macOS, Windows) and Python >= 3.10
lock:
	uv pip compile requirements.txt --universal --generate-hashes --python-version 3.10 -o requirements.lock
	uv pip compile requirements-dev.txt --universal --generate-hashes --python-version 3.10 -o requirements-dev.lock

test: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests

demo: env
	bash tools/demo.sh "$(PY)" "$(DEMO_DIR)" "$(DEMO_OUT)"

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
