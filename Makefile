# The README's two commands: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup tools run test clean

setup: $(STAMP)

# Pinned, tested versions; torch is the CPU build (this machine's pip finds it
# locally), so set-up never downloads CUDA packages.
$(STAMP): pyproject.toml constraints.txt examples/custom-model/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	# The example plug-in package (its own G, D and loss), which the tests train: --no-deps,
	# since all it needs is gan-dist and torch, installed just above.
	$(PY) -m pip install --quiet -c constraints.txt --no-deps -e examples/custom-model
	touch $(STAMP)

# Command-line tools the tests run (promtool; kubectl if the venv lacks it).
tools: setup
	tests/tools/ensure-tools.sh $(VENV)/bin

run: setup
	$(VENV)/bin/gan-dist train

# Two xdist workers, a test module to one worker (its module-scoped fixtures, a Ray cluster
# among them, set up once), the modules that start Ray first (tests/conftest.py): while
# one module's Ray cluster starts or waits, the other worker's tests use the CPU.
# docs/testing.md.
test: setup tools
	$(PY) -m pytest -q -ra -n 2 --dist loadfile --no-loadscope-reorder tests

clean:
	rm -rf $(VENV) runs .pytest_cache
