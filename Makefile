# stainshift — one command to set up and run the demo, one to set up and run the tests.
#   make demo   creates .venv (if needed), installs everything pinned, runs the synthetic multi-center demo
#   make test   creates .venv (if needed), installs everything pinned + test deps, runs pytest
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2
# pytest workers (pytest-xdist); test files stay whole on one worker, so module fixtures run once
TEST_WORKERS ?= 2
STAMP  := $(VENV)/.installed

.PHONY: venv demo test report lint bench lock clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# one resolver pass, every version constrained by the lock file
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES)
	@echo "demo finished: see results/ (report/summary.md, metrics/, qc/)"

report: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --report results/report.html

test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q --durations=20 -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint
	$(BIN)/snakefmt --check workflow/

bench: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash benchmarks/run_all.sh

# Re-resolve the lock from pyproject.toml in a scratch venv (maintainers only).
lock:
	rm -rf /tmp/stainshift-lock && $(PYTHON) -m venv /tmp/stainshift-lock
	/tmp/stainshift-lock/bin/pip install -q ".[test]"
	( echo "# Full pinned environment (pip constraints), resolved from pyproject.toml on Python 3.11."; \
	  echo "# Regenerate: make lock"; \
	  /tmp/stainshift-lock/bin/pip freeze --exclude stainshift | sed 's/+cpu$$//' ) > requirements.lock

clean:
	rm -rf $(VENV) .snakemake results
