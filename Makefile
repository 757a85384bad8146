# Two commands on a fresh machine:
#   make run    the main job on the embedded default (no account, no network)
#   make test   every test: lint, unit, loopback HTTP, IPython, widgets, nbval, browser, docs
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint docs lab bench chromium clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Debian's chromium for the browser test (Playwright cannot download its own browser here):
# apt-get as root (CI), else through sudo.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	  else echo "the browser test needs Debian's chromium: as root, run apt-get update && apt-get install chromium fonts-dejavu-core (or give this user sudo rights)" >&2; exit 1; fi; \
	  echo "installing Debian's chromium for the browser test$${sudo:+ (with sudo)}"; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; }

# The main job: the quickstart notebook on the embedded default (no account, no network).
run: $(STAMP)
	mkdir -p build
	cp notebooks/quickstart.ipynb build/quickstart.ipynb
	cd build && IS_OFFLINE=true ../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
	  quickstart.ipynb --log-level WARN
	@echo "executed notebook: build/quickstart.ipynb"
	@echo "local recording:   build/isstreamer_out.csv ($$(grep -vc '^#' build/isstreamer_out.csv) events so far)"
	@echo "open it with: make lab NOTEBOOK=build/quickstart.ipynb"

lint: $(STAMP)
	$(BIN)/ruff check isstreamer_jupyter tests benchmarks docs

test: $(STAMP) chromium lint docs
	$(BIN)/python -m pytest

# The manual, from docs/ into build/docs. Warnings are errors. -E reads every page afresh: an
# incremental build would not repeat a warning the last run gave. The build reads no network:
# the notebooks show their saved outputs, and nbval runs them in `make test`.
docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs build/docs
	@echo "the manual: build/docs/index.html"

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# JupyterLab at the repository's root, so notebooks/ and build/ (what `make run` wrote) are both
# in its file browser; NOTEBOOK=path also opens that notebook, and the URLs it prints (where no
# browser opens) lead to it (LabApp's default_url: LabApp sets ServerApp's own). --allow-root
# when Jupyter would refuse to run: its own check, os.geteuid() == 0 (`id -u` may be a shim
# that says otherwise).
NOTEBOOK ?=
lab: $(STAMP)
	$(BIN)/jupyter lab $(if $(filter 0,$(shell $(PYTHON) -c 'import os; print(os.geteuid())')),--allow-root) --ServerApp.root_dir=. $(if $(NOTEBOOK),--LabApp.default_url=/lab/tree/$(NOTEBOOK)) $(NOTEBOOK)

clean:
	rm -rf $(VENV) build .pytest_cache
