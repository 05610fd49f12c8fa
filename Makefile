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
# The versions the tests passed with (`make upgrade` refreshes them): `make install` and CI install
# exactly these, where setup.py's ranges would take whatever is newest that day. Packages that
# must be installed with --no-deps (their metadata pins versions they do not need) stay out of it.
CONSTRAINTS := constraints.txt
NO_DEPS := facenet-pytorch==2.6.0

.PHONY: install demo test test-all bench lint format clean upgrade

# One line per step; pip's own output is kept to its warnings and errors (-q), so a failure
# still shows why, and make stops there.
PIP_INSTALL := $(PIP) install -q --disable-pip-version-check

$(STAMP): setup.py $(CONSTRAINTS)
	@test -d $(VENV) || { echo "creating the virtual environment $(VENV) ($(PYTHON))"; \
		$(PYTHON) -m venv $(VENV); }
	@echo "updating pip"
	@$(PIP_INSTALL) --upgrade pip
	@echo "installing $(TORCH_PIN) (the first time takes a few minutes)"
	@$(PIP_INSTALL) $(TORCH_PIN)
	@echo "installing vlpipe (editable) with its test, s3, dask and serve extras"
	@$(PIP_INSTALL) -e '.[test,s3,dask,serve]' $(TORCH_PIN) -c $(CONSTRAINTS)
	@echo "installing facenet-pytorch (the MTCNN face detector's weights for --detect-faces)"
	@# --no-deps: its metadata pins torch<2.3, numpy<2, Pillow<10.3, none of which its MTCNN needs
	@$(PIP_INSTALL) --no-deps $(NO_DEPS)
	@touch $(STAMP)
	@echo "installed vlpipe $$($(PY) -c 'import vlpipe; print(vlpipe.__version__)') in $(VENV):" \
		"run 'source $(VENV)/bin/activate' to use the vlpipe command"

install: $(STAMP)

# The benchmarks' extra contenders (simplejpeg, OpenCV) and tools (py-spy, psutil).
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -e '.[test,s3,dask,serve,bench]' $(TORCH_PIN) -c $(CONSTRAINTS)
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

# Move to the newest releases within setup.py's ranges, run the tests on them, and only if they
# pass write the versions to constraints.txt (then commit it). The torch pair stays pinned.
upgrade: install
	$(PIP_INSTALL) --upgrade --upgrade-strategy eager -e '.[test,s3,dask,serve]' $(TORCH_PIN)
	$(PY) -m pytest -q
	{ echo "# The versions the tests passed with; make install and CI install exactly these (pip -c)."; \
	  echo "# Refresh with make upgrade (newest within setup.py's ranges, tests, then this file)."; \
	  $(PIP) list --format=freeze --exclude-editable --disable-pip-version-check \
		| grep -v -i -E '^(pip|setuptools|wheel$(foreach p,$(NO_DEPS),|$(firstword $(subst ==, ,$(p)))))=='; \
	} > $(CONSTRAINTS)
	@echo "$(CONSTRAINTS) refreshed from the versions the tests passed with: review and commit it"
