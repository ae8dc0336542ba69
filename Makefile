# qlccomm: `make demo` and `make test` work on a fresh machine (they create .venv if missing).
# `make demo` installs only what the demo needs: torch (CPU wheel) and the package, whose
# dependencies include numba for the CPU kernels; `make test` adds the test extras (pytest,
# pytest-mpi, hypothesis, mpi4py, MPICH from PyPI, zstandard, lz4) and triton, whose
# interpreter runs the Triton kernels' tests on CPU.  Either runs `qlccomm warmup` once.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qlccomm-installed
TESTSTAMP := $(VENV)/.qlccomm-test-installed
NPROC  ?= 2

.PHONY: install install-test demo test test-serial test-mpi test-torchrun bench fuzz clean

# torch==2.13.0 is the CPU wheel of PyTorch; pyproject itself accepts torch>=2.6
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	$(VENV)/bin/qlccomm warmup   # numba compiles the CPU kernels once, into its on-disk cache
	touch $(STAMP)

$(TESTSTAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[test,triton]'
	touch $(TESTSTAMP)

install: $(STAMP)

install-test: $(TESTSTAMP)

demo: install
	$(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC) launch/train_ddp.py --steps 30

test: install-test
	$(PY) tests/run_all.py

test-serial: install-test
	$(PY) -m pytest -q tests

bench: install
	$(VENV)/bin/qlccomm bench --codec qlc --dtype bf16
	$(VENV)/bin/qlccomm bench --codec qlc --dtype e4m3

# a long mutation campaign over every codec, dtype and codebook mode; reproducers of bad cases in fuzz-out/
fuzz: install
	$(PY) -m qlccomm.fuzz --streams 1000000 --workers $(NPROC) --out fuzz-out

clean:
	rm -rf $(VENV) build *.egg-info
