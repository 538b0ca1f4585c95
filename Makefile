# zfoundry — `make demo` and `make test` are the two commands in README.md.
# Each creates ./.venv on first use (uv from PyPI, then every runtime dependency).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.zfoundry-installed
RUN_DIR ?= runs/quickstart

# No hub access here: fail fast on a missing local checkpoint instead of retrying for ~45 s.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup demo test lint clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) -e ".[cpu,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zfoundry run examples/quickstart.toml --run $(RUN_DIR)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean-runs:
	rm -rf runs/
