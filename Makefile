# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# The torch/torchvision pair that installs from local disk on our machines (a CUDA build that
# also runs on CPU); PyPI's other torchvision builds fail to import beside it.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-all bench lint format clean

$(STAMP): setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[test,s3,dask,serve]' $(TORCH_PIN)
	touch $(STAMP)

install: $(STAMP)

# The benchmarks' extra contenders (simplejpeg, OpenCV) and tools (py-spy, psutil).
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -e '.[test,s3,dask,serve,bench]' $(TORCH_PIN)
	touch $(BENCH_STAMP)

demo: install
	$(VENV)/bin/vlpipe run examples/images --output demo-out --overwrite
	$(VENV)/bin/vlpipe search "a dog running on the grass" --index demo-out -k 5
	$(VENV)/bin/vlpipe search --image examples/images/$$(ls examples/images | grep jpg | head -1) --index demo-out -k 5

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(BENCH_STAMP)
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check vlpipe tests bench
	$(VENV)/bin/ruff format --check vlpipe tests bench

format: install
	$(VENV)/bin/ruff format vlpipe tests bench
	$(VENV)/bin/ruff check --fix vlpipe tests bench

clean:
	rm -rf demo-out .pytest_cache
