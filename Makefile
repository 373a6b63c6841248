# edgekit developer commands. `make demo` and `make test` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekit-installed

PKG := build/fmnist.edgepkg

.PHONY: demo test bench lint typecheck fmt setup system-deps clean

# Convert Fashion-MNIST with the defaults, then run the package under the bandit.
demo: setup
	$(BIN)/edgekit convert --dataset fashion-mnist --out $(PKG) --force
	$(BIN)/edgekit eval $(PKG) --dataset fashion-mnist --policy bandit --plots build/fmnist-eval

# The runtime benchmark (ratios against their targets); converts first if needed.
bench: setup $(PKG)/manifest.json
	$(BIN)/python -m benchmarks.runtime --package $(PKG) --out build/bench

$(PKG)/manifest.json: | setup
	$(BIN)/edgekit convert --dataset fashion-mnist --out $(PKG) --force

test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' package-dir mapping, so check a symlinked view
# of the installed layout (edgekit/, edgekit/converters -> converters/, ...).
typecheck: setup
	@rm -rf build/typecheck && mkdir -p build/typecheck/edgekit
	@for f in edgekit/*; do ln -s "$$PWD/$$f" build/typecheck/edgekit/; done
	@for d in converters runtime devices; do ln -s "$$PWD/$$d" build/typecheck/edgekit/$$d; done
	cd build/typecheck && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p edgekit

fmt: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

setup: system-deps $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

$(STAMP): pyproject.toml requirements/lock.txt requirements/nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar off -r requirements/lock.txt
	$(BIN)/pip install --progress-bar off --no-deps -r requirements/nodeps.txt
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

clean:
	rm -rf build .mypy_cache .pytest_cache .ruff_cache
