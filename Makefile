# The whole set-up: `make demo` trains the VAE on Fashion-MNIST, `make test` runs the tests.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
SYSTEM_DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CACHED_DATA := $(or $(PYROVAE_DATA),$(HOME)/.cache/pyrovae)/FashionMNIST/raw/train-images-idx3-ubyte
DEMO_EPOCHS ?= 10

.PHONY: demo test install data

demo: data install
	rm -rf runs/demo
	pyrovae train vae --epochs $(DEMO_EPOCHS) --out runs/demo
	@echo "runs/demo holds config.json, metrics.jsonl, checkpoint.pt, samples.png and reconstructions.png"

# Notebooks run top to bottom in their fast mode (PYROVAE_FAST=1: few epochs, small data).
test: data install
	PYROVAE_FAST=1 $(PYTHON) -m pytest -q --nbmake tests notebooks

install:
	$(PIP) install -e ".[dev]" -c constraints.txt

# Fashion-MNIST from the Debian package when apt is there and the files are not;
# otherwise pyrovae downloads it through torchvision on first use (online machines).
data:
	@if [ -f "$(SYSTEM_DATA)" ] || [ -f "$(CACHED_DATA)" ]; then \
		echo "Fashion-MNIST is on disk"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; } \
		|| echo "could not install dataset-fashion-mnist (not root?); pyrovae will try to download the data"; \
	else \
		echo "no apt-get here; pyrovae will try to download Fashion-MNIST through torchvision"; \
	fi
