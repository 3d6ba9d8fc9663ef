# Every target works from a clean clone with only Python 3.11 installed.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.facestream-installed
DEMO_DIR ?= demo-output

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch first: a bare `torch` requirement would pull GBs of CUDA packages.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -c requirements/constraints.txt -e ".[engines,demo,dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/facestream demo --output-dir $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check stream engines calibration tests

bench: $(STAMP)
	$(VENV)/bin/facestream demo --output-dir $(DEMO_DIR) --no-swap
	$(VENV)/bin/facestream bench $(DEMO_DIR)/target.mp4

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache build *.egg-info
