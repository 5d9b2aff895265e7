# make test       set up a virtual environment from requirements.txt and run every test
# make lint       ruff's lint and format checks (requirements-lint.txt), as CI runs them
# make train      set up, then train the Fashion-MNIST preset (the main job)
#                 (extra flags: make train ARGS="--epochs 5 --output runs/short")
# make bench      the CPU benchmark against PyTorch eager (needs torch in the environment)
# make gpu-check  on a GPU machine: versions, kernel smoke tests, GPU benchmarks, GPU tests (8 min)
# make mpi-setup  optional: Open MPI (Debian's, as root) and mpi4py, for mpirun training and its tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: test lint setup train fmnist-data mpi-setup clean bench gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

test: setup
	$(PY) -m pytest

lint: $(VENV)/.lint-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

$(VENV)/.lint-installed: requirements-lint.txt | $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-lint.txt
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package when we may install it;
# otherwise the trainer says how to get the files (or downloads them with ARGS=--download).
fmnist-data: setup
	@if $(PY) -c "import sys; from minimlp.data.fmnist import find_data_dir; sys.exit(find_data_dir() is None)"; then \
	  true; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
	    || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	else \
	  echo "Fashion-MNIST is not installed; sudo apt-get install dataset-fashion-mnist, or make train ARGS=--download"; \
	fi

# One BLAS thread: this model's matrix products are small, and on a busy or shared CPU a
# second BLAS thread spins and costs several times what it gains (measured: 3-4x slower
# steps under load, no gain when idle); the elementwise kernels still use every core.
train: setup fmnist-data
	OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-1} OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} \
	  $(PY) -m minimlp.train $(ARGS)

# Multi-process training: mpirun from Debian's Open MPI (installed when we run as root),
# mpi4py from PyPI (requirements-mpi.txt) into the virtual environment.  Without these,
# make test skips the MPI tests and says why.
mpi-setup: setup
	@if ! command -v mpirun >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Open MPI (apt-get install openmpi-bin libopenmpi-dev)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q openmpi-bin libopenmpi-dev >/dev/null 2>&1 \
	      || { apt-get update -q >/dev/null && apt-get install -y -q openmpi-bin libopenmpi-dev >/dev/null; }; \
	  else \
	    echo "Open MPI is not installed: sudo apt-get install openmpi-bin libopenmpi-dev, then make mpi-setup"; \
	    exit 1; \
	  fi; \
	fi
	$(PY) -m pip install --quiet -r requirements-mpi.txt

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# The README's performance table: minimlp and PyTorch eager side by side, in alternating rounds.
BENCH_PY ?= $(PY)
bench: setup
	$(BENCH_PY) -m minimlp.bench --model ff_fmnist -b 128 --compare torch --steps 50 --rounds 5
	$(BENCH_PY) -m minimlp.bench --model ff_tiny -b 32 --compare torch --steps 30 --rounds 5

# GPU check, for a machine with a GPU, CuPy and (for the comparison) a CUDA build of
# PyTorch in GPU_PY (default: python3 as found; nothing is installed, since a GPU machine
# may have no network).  python -m minimlp.bench.gpu_check records the versions, runs kernel
# smoke tests against float64, ff_tiny (batch 128) and ff_base (batch 64) against PyTorch
# eager in float32, TF32 and float16, then the tests marked gpu; each step in its own
# process with its own time limit, all within 8 minutes.  It leaves two files in
# GPU_CHECK_DIR: gpu-check.tar.gz (every log and JSON) and summary.txt, the table it
# prints last.  GPU_CHECK_ARGS passes options (python -m minimlp.bench.gpu_check --help).
GPU_PY ?= $(PYTHON)
GPU_CHECK_DIR ?= gpu-check
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PY) -m minimlp.bench.gpu_check --out $(GPU_CHECK_DIR) $(GPU_CHECK_ARGS)
