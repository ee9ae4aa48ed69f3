# Two commands do all the set-up: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on this project's machines; a user with a CUDA torch already in the venv keeps it.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.farm-installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/farm demo

# Two workers, one test file each at a time (pytest-xdist): the namespace LAN tests mostly wait on
# processes starting, so they overlap the CPU-bound model tests (about 10 instead of 14 minutes on
# two cores). `pytest tests/test_x.py` alone still runs in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf renders .pytest_cache
