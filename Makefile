# edgekit developer commands. `make demo` and `make test` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgekit-installed

PKG := build/fmnist.edgepkg

.PHONY: demo device-demo camera-demo iot-demo test bench bench-split lint typecheck fmt setup system-deps clean

# Convert Fashion-MNIST with the defaults, then run the package under the bandit.
demo: setup
	$(BIN)/edgekit convert --dataset fashion-mnist --out $(PKG) --force
	$(BIN)/edgekit eval $(PKG) --dataset fashion-mnist --policy bandit --plots build/fmnist-eval
	$(BIN)/python -m benchmarks.split --package $(PKG) --out build/split-demo --demo
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory device-demo; \
	else echo "edgekit: not root: skipping the virtual Raspberry Pi (run 'make device-demo' as root)"; fi
	@$(MAKE) --no-print-directory camera-demo
	@$(MAKE) --no-print-directory iot-demo

# Push the package to a virtual arm64 Raspberry Pi (qemu-user + sshd, root only), classify
# test images there with LiteRT, and benchmark on it. The device stays up: `ssh -F
# build/ssh_config demo-pi`; `edgekit device emulate stop --name demo-pi` ends it.
DEVICE_SSH := --ssh-config build/ssh_config
device-demo: setup $(PKG)/manifest.json
	@mkdir -p build && rm -f build/ssh_config
	$(BIN)/edgekit device emulate start --name demo-pi --key build/demo-key.pub --key-generate \
		--ssh-config build/ssh_config
	$(BIN)/edgekit device probe demo-pi $(DEVICE_SSH)
	$(BIN)/edgekit push $(PKG) demo-pi $(DEVICE_SSH)
	$(BIN)/edgekit device predict demo-pi --dataset fashion-mnist -n 20 $(DEVICE_SSH)
	$(BIN)/edgekit bench $(PKG) demo-pi -n 200 $(DEVICE_SSH) --json > build/device-bench.json
	@echo "edgekit: device benchmark in build/device-bench.json"

# The smart camera app on the changing Fashion-MNIST test stream for a few seconds; it prints
# where its page is (python -m apps.smart_camera PKG --source test://fashion-mnist --loop runs on).
camera-demo: setup $(PKG)/manifest.json
	$(BIN)/python -m apps.smart_camera $(PKG) --source test://fashion-mnist --loop --fps 30 \
		--duration 8 --port 0 --print 60 --log build/camera-demo.jsonl

# The IoT node against a local Mosquitto for a few seconds: test images dropped into its inbox,
# the MQTT events a subscriber receives printed (apps/iot_node/README.md).
iot-demo: setup $(PKG)/manifest.json
	$(BIN)/python -m apps.iot_node.demo $(PKG)

# Split computing over shaped links (1/10/100 Mbit/s, tc tbf in a netns; root).
bench-split: setup $(PKG)/manifest.json
	$(BIN)/python -m benchmarks.split --package $(PKG) --out build/split

# The runtime benchmark (ratios against their targets); converts first if needed.
bench: setup $(PKG)/manifest.json
	$(BIN)/python -m benchmarks.runtime --package $(PKG) --out build/bench
	$(BIN)/python -m benchmarks.serve_load --package $(PKG) --out build/bench
	$(BIN)/python -m benchmarks.camera --package $(PKG) --out build/bench

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
