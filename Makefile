# Everything runs inside .venv, created on first use. `make demo` and `make test` need only
# python3 (>= 3.10) and, for the demo's data, apt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Pin torch/torchvision to builds that exist for this machine's architecture (a bare `torch`
# would pull the newest multi-GB CUDA build). Override with `make TORCH_SPEC="..."`.
ARCH := $(shell uname -m)
ifeq ($(ARCH),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
VENV_GB ?= 2
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
VENV_GB ?= 7
endif
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test test-all install data clean

$(VENV)/.installed: pyproject.toml
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); if [ "$$free" -lt $(VENV_GB) ]; then \
		echo "make install: the venv needs ~$(VENV_GB) GB (torch and its libraries) but $$free GB are free here; free disk space and rerun"; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet --no-cache-dir $(TORCH_SPEC)
	$(PIP) install --quiet --no-cache-dir -e ".[test]"
	touch $@

install: $(VENV)/.installed

data:
	@if [ -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(FASHION_MNIST)"; \
	elif [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) \
		|| { echo "could not install Fashion-MNIST: run 'apt-get install dataset-fashion-mnist' as root"; exit 1; }; \
	elif command -v sudo >/dev/null; then \
		sudo apt-get install -y -qq dataset-fashion-mnist \
		|| { echo "could not install Fashion-MNIST: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; }; \
	else \
		echo "Fashion-MNIST is missing and this user cannot apt-get: run 'apt-get install dataset-fashion-mnist' as root"; exit 1; \
	fi

# Train a small ConvNeXt on real Fashion-MNIST on the CPU (1.5-3 minutes on 2 cores, by the machine): the `small`
# preset (convnext_micro_bn_small_input at 28 px, Muon, 3 epochs over the 60,000 training images), evaluated on the
# full 10,000-image test set. The in-memory images are batched in the training process (no loader workers), so
# both cores compute.
demo: install data
	$(VENV)/bin/convnext train --preset small --data.dataset fashion_mnist --data.root $(FASHION_MNIST) \
		--data.workers 0 --runtime.out runs --runtime.run_name demo-fashion-mnist --runtime.overwrite true

# The tests that read real data (Fashion-MNIST) run, not skip: install it as `make demo` does. One pytest-xdist
# worker per core (tests/conftest.py gives each one thread); `make test PYTEST_ARGS=` runs them in one process.
PYTEST_ARGS ?= -n auto
test: install data
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: install data
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
