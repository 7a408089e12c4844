# innerear: the two commands of the README.
#   make reproduce   set-up, then the whole pipeline on the embedded default (demo profile)
#   make test        set-up, then every test (ruff, pytest, smoke book build, nbval, book tests)
#   make lab         set-up, then JupyterLab on .venv, opened at notebooks/ (README: Explore in JupyterLab)
# Both create or update .venv themselves; only Python 3.11, pip and the registries are needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install
PROFILE ?= demo
SEED   ?= 0
export TF_CPP_MIN_LOG_LEVEL := 3
export PYTHONHASHSEED := 0

.PHONY: setup reproduce test test-fast lab kernel book bench publish chromium clean-runs clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,dev]"
	@touch $(STAMP)

reproduce: setup
	$(BIN)/innerear reproduce --profile $(PROFILE) --seed $(SEED)

# nbval re-executes every page of the smoke run (papermill's copies, which hold the outputs)
# and compares the cells tagged nbval-check-output with what papermill stored, after
# tests/nbval_sanitize.cfg (addresses, random ids, paths, seconds)
SMOKE_PAGES := _build/test-site/book/executed/*.ipynb _build/test-site/book/executed/*/*.ipynb

# pytest: one worker process per core (at most 4), a test module's tests kept in one worker so its
# module-scoped fixtures (trained cascades, the shipped segmenter) are built once
PYTEST_WORKERS := -n auto --maxprocesses 4 --dist loadscope

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=25 $(PYTEST_WORKERS) tests
	$(BIN)/innerear reproduce --profile smoke --seed $(SEED) --site _build/test-site
	INNEREAR_HOME=$(CURDIR) INNEREAR_PROFILE=smoke $(BIN)/python -m pytest -q -p no:cacheprovider --nbval-lax \
		--nbval-sanitize-with tests/nbval_sanitize.cfg $(SMOKE_PAGES)
	$(MAKE) --no-print-directory chromium
	INNEREAR_SITE=_build/test-site $(BIN)/python -m pytest -q -p no:cacheprovider tests_book

test-fast: setup
	$(BIN)/python -m pytest -q --durations=25 $(PYTEST_WORKERS) tests

# JupyterLab from .venv, the project as its root and the file browser at notebooks/. Its kernel
# "python3" is .venv's own Python (the kernelspec ipykernel installs in .venv, which Jupyter in a
# virtual environment prefers to a user-wide one), so nothing needs registering. The notebooks'
# parameters cells default to $$INNEREAR_PROFILE: `make lab PROFILE=smoke` opens them at smoke scale.
LAB_ARGS ?=

lab: setup
	INNEREAR_HOME=$(CURDIR) INNEREAR_PROFILE=$(PROFILE) $(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) \
		--FileContentsManager.preferred_dir=notebooks $(LAB_ARGS)

# For a Jupyter installed elsewhere (system, conda, VS Code): register .venv as the kernel
# "innerear" in your user's kernels, then choose "Python (innerear)" in that Jupyter.
kernel: setup
	$(BIN)/python -m ipykernel install --user --name innerear --display-name "Python (innerear)"

# Debian's Chromium for the offline rendering test of the built book (root, as in CI)
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

book: setup
	$(BIN)/jupyter-book build . -W -n --keep-going

# Push the built book to the gh-pages branch of PAGES_REMOTE (GitHub Pages serves it), as
# Jupyter Book's guide does: ghp-import commits SITE_HTML onto the local gh-pages branch, adds
# .nojekyll and force-pushes that branch. Build first (make reproduce); nothing is rebuilt here.
PAGES_REMOTE ?= origin
PAGES_BRANCH ?= gh-pages
SITE_HTML    ?= _build/html

publish:
	@test -f $(SITE_HTML)/index.html || { echo "make publish: $(SITE_HTML)/index.html does not exist: build the book first (make reproduce)" >&2; exit 1; }
	$(BIN)/ghp-import --no-jekyll --push --force --remote $(PAGES_REMOTE) --branch $(PAGES_BRANCH) \
		--message "Publish the book built from $$(git describe --always --dirty 2>/dev/null || echo 'an unversioned tree')" \
		$(SITE_HTML)

bench: setup
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_segment.py --large

clean-runs:
	rm -rf runs/smoke book/executed _build

clean:
	rm -rf _build book/executed runs data/cache
