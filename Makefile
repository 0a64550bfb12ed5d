# Two entry points that do all the set-up on a fresh machine:
#   make run   -> environment + the main job (a thresholds search on the built-in data)
#   make test  -> environment + lint + the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: env run test check lint limits clean chromium

$(BIN)/mer-tune: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first: a bare `torch` requirement would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

env: $(BIN)/mer-tune

run: env
	$(BIN)/mer-tune search --space thresholds --trials 4

lint: env
	$(BIN)/ruff check mer_tune tests benchmarks
	$(BIN)/ruff format --check mer_tune tests benchmarks

# The browser test drives Debian's chromium (playwright uses it; no browser download).
# Where apt cannot install it (no root), the suite still runs and that test is skipped
# with how to run it; CI (CI=true, root) installs it and the test refuses to skip there.
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || echo "note: chromium could not be installed here; the browser test will be skipped (install Debian's chromium as root, then make test)" >&2

# The suite runs in a network namespace whose only interface is loopback (see .ci/isolated).
test: env lint chromium
	.ci/isolated $(BIN)/pytest -q

# The fast tier for the edit-test loop (under a minute): lint + every test that starts no
# Ray, no server and no browser.
check: env lint
	$(BIN)/pytest -q -n 2 -m "not slow and not browser and not services"

# The code's size limits (module, function, parameters, import circles): where it breaks them.
limits: env
	$(BIN)/python tests/code_limits.py

clean:
	rm -rf $(VENV) .pytest_cache
