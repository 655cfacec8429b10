# Two commands on a fresh machine: `make run` and `make test`. Each sets up what it needs.
# torch is installed first and pinned: an unpinned torch pulls several GB of CUDA packages.
# The editable install is path-based (compat): the app package maps the checkout root, which
# confuses setuptools' default editable finder.

VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
PORT   ?= 8501

.PHONY: setup run lint test test-fast test-matrix chromium benchmarks clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $@

setup: $(BIN)/.installed

# The app on the default model (zoo:digits-cnn) at http://localhost:$(PORT).
run: setup
	$(BIN)/pruning-explorer app --port $(PORT)

# ruff: pyflakes, pycodestyle, isort, bugbear and pyupgrade (pyproject.toml), and the formatter.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The lint gate, then every test, including the real-browser tests (Debian's chromium, installed
# here when missing). The architecture matrix runs one thread per test (tiny tensors), so it runs
# on two pytest-xdist workers, each architecture's cells in one worker (its files built once);
# everything else runs in one process, as before.
MATRIX := tests/unit/test_architectures.py
XDIST  := -n 2 --dist loadgroup

test: setup chromium lint
	$(BIN)/python -m pytest --ignore=$(MATRIX)
	$(BIN)/python -m pytest $(MATRIX) $(XDIST)

# Everything but the browser tests.
test-fast: setup
	$(BIN)/python -m pytest -m "not browser"

# The architecture matrix alone (every method in every cell; part of `make test`).
test-matrix: setup
	$(BIN)/python -m pytest $(MATRIX) $(XDIST)

chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "installing Debian's chromium for the browser test"; \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
	    || { echo "could not install chromium (need root and apt)"; exit 1; }; \
	fi

benchmarks: setup
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
