# Two entry points: `make demo` (app on the built-in demo runs) and `make test` (whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench cloud clean-demo

$(STAMP): requirements.txt
	@echo ">> creating the environment in $(VENV) (first time only, ~1 min)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade pip
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m core demo
	$(PY) -m streamlit run app.py

test: $(STAMP)
	bash scripts/test.sh

bench: $(STAMP)
	$(PY) bench/bench_demo.py
	$(PY) bench/bench_sweep.py
	$(PY) bench/bench_pages.py
	$(PY) bench/bench_internals.py
	$(PY) bench/bench_scrub.py  # needs Debian's chromium

# Optional extras: runs on object storage (s3://, gs://) and sweeps on Ray (docs/distributed.md).
cloud: $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -r requirements-cloud.txt

clean-demo:
	rm -rf data/runs/demo-healthy data/runs/demo-troubled
