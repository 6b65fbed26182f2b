# Two commands on a fresh machine: `make run` and `make test`.
# Both create (or reuse) .venv inside the repo and install the package there.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/astor
CONFIG ?= configs/astor.py
PYTEST_ARGS ?=

.PHONY: venv run smoke test lint bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	-@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ ! -f /usr/share/wordnet/data.noun ]; then { apt-get install -y -qq --no-install-recommends wordnet-base || { apt-get update -qq && apt-get install -y -qq --no-install-recommends wordnet-base; }; } >/dev/null 2>&1 || echo "note: wordnet-base not installed; METEOR will use exact+stem matches"; fi
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m astor_jax.main --config=$(CONFIG) --workdir=$(WORKDIR)

smoke: $(STAMP)
	$(PY) -m astor_jax.main --config=configs/astor.py:smoke --workdir=runs/smoke

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS) tests

lint: $(STAMP)
	$(VENV)/bin/ruff check astor_jax configs tests bench

bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs
