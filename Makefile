# qlccomm: `make demo` and `make test` work on a fresh machine (they create .venv if missing).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.qlccomm-installed
NPROC  ?= 2

.PHONY: install demo test test-serial test-mpi test-torchrun bench fuzz clean

# torch==2.13.0 is the CPU wheel of PyTorch; pyproject itself accepts torch>=2.6
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,triton,native]'
	$(VENV)/bin/qlccomm warmup   # numba compiles the CPU kernels once, into its on-disk cache
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC) launch/train_ddp.py --steps 30

test: install
	$(PY) tests/run_all.py

test-serial: install
	$(PY) -m pytest -q tests

bench: install
	$(VENV)/bin/qlccomm bench --codec qlc --dtype bf16
	$(VENV)/bin/qlccomm bench --codec qlc --dtype e4m3

# a long mutation campaign over every codec, dtype and codebook mode; reproducers of bad cases in fuzz-out/
fuzz: install
	$(PY) -m qlccomm.fuzz --streams 1000000 --workers $(NPROC) --out fuzz-out

clean:
	rm -rf $(VENV) build *.egg-info
