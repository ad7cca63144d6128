# SuperDiff kit. `make demo` and `make test` each work from a fresh clone (they run `setup` first).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first and pinned: here it installs the local CPU wheel in seconds; on a CUDA machine PyPI's
# torch==2.13.0 is the CUDA build. Override for other platforms, e.g. `make setup TORCH="torch==2.5.1"`.
TORCH  ?= torch==2.13.0
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
CHROMIUM ?= /usr/bin/chromium
APP_PORT ?= 8866
APP_HOST ?= localhost
APP_ARGS ?=

.PHONY: FORCE setup demo test lint pytest pytest-widgets7 compat compat-card compat-lower nbval e2e browser-deps notebooks lab app study-and results-digits weights clean

setup: $(VENV)/.installed

# The TORCH the venv was set up with: a setup with another one reinstalls (the stamp changes only then).
$(VENV)/.torch: FORCE
	@mkdir -p $(VENV)
	@test "$$(cat $@ 2>/dev/null)" = '$(TORCH)' || echo '$(TORCH)' > $@

$(VENV)/.installed: pyproject.toml setup.py $(VENV)/.torch
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/superdiff demo --out outputs

lint: setup
	$(BIN)/ruff check superdiff tests benchmarks scripts
	$(BIN)/ruff format --check superdiff tests benchmarks scripts

pytest: setup
	$(BIN)/python -m pytest -q -m "not browser"

# The playground's Python side under ipywidgets 7.7.1, Colab's default: a small venv that sees .venv's packages
# (a .pth) under its own ipywidgets 7.7.1, widgetsnbextension 3.6.1 and jupyterlab_widgets 1.1.1 (≈ 3 s to build).
W7 := .venv-widgets7
WIDGETS7 := ipywidgets==7.7.1 widgetsnbextension==3.6.1 jupyterlab_widgets==1.1.1 ipython_genutils==0.2.0
SITE := import sysconfig; print(sysconfig.get_paths()["purelib"])

$(W7)/.installed: $(VENV)/.installed
	rm -rf $(W7)
	$(BIN)/python -m venv --without-pip $(W7)
	site="$$($(W7)/bin/python -c '$(SITE)')" && \
	  echo "import site; site.addsitedir('$$($(BIN)/python -c '$(SITE)')')" > "$$site/zz_overlay_venv.pth" && \
	  $(BIN)/python -m pip install --quiet --no-deps --target "$$site" $(WIDGETS7)
	touch $@

pytest-widgets7: $(W7)/.installed
	$(W7)/bin/python -c 'import ipywidgets as w; assert w.__version__ == "7.7.1", w.__file__'
	$(W7)/bin/python -m pytest -q -W ignore::DeprecationWarning tests/test_widgets.py

# The verified range (not part of `make test`; ≈ 20 min; README "Dependencies"): the pytest suite without browser tests
# in venvs that see .venv's packages (a .pth) under their own Hugging Face stack, at the model card's versions
# and at the declared lower bounds. torch stays .venv's: another torch is a multi-GB download.
COMPAT_card := diffusers==0.32.1 transformers==4.47.1 accelerate==1.2.1
COMPAT_lower := diffusers==0.30.0 transformers==4.40.0 accelerate==0.30.0

compat: compat-card compat-lower

compat-card compat-lower: compat-%: $(VENV)/.installed
	rm -rf $(VENV)-compat-$*
	$(BIN)/python -m venv --without-pip $(VENV)-compat-$*
	echo "import site; site.addsitedir('$$($(BIN)/python -c '$(SITE)')')" \
	  > "$$($(VENV)-compat-$*/bin/python -c '$(SITE)')/zz_overlay_venv.pth"
	$(BIN)/python -m pip --python $(VENV)-compat-$*/bin/python install --quiet $(COMPAT_$*)
	$(VENV)-compat-$*/bin/python -c 'import diffusers as d, transformers as t, accelerate as a, torch; \
	  print("compat-$*:", *(f"{m.__name__} {m.__version__}" for m in (d, t, a, torch)))'
	HF_HOME="$(abspath $(VENV)-compat-$*)/hf" JUPYTER_PATH="$(abspath $(VENV))/share/jupyter" \
	  $(VENV)-compat-$*/bin/python -m pytest -q -m "not browser" -p no:cacheprovider

nbval: setup
	$(if $(NOTEBOOKS),$(BIN)/python -m pytest -q --nbval $(NOTEBOOKS) --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider,@echo "no notebooks yet")

# The playground in JupyterLab and in the Voilà app, driven by headless Chromium (tests/test_browser.py);
# screenshots in outputs/e2e/.
e2e: setup browser-deps
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -q -m browser --durations=0

# Debian's Chromium for the browser tests (Playwright's own browser download is not used).
browser-deps:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "The browser tests need Chromium at $(CHROMIUM): sudo apt-get install -y chromium"; exit 1; \
	  fi; }
	@test -x $(CHROMIUM) || { echo "no Chromium at $(CHROMIUM) (set CHROMIUM=/path/to/chromium)"; exit 1; }

test: lint pytest pytest-widgets7 nbval e2e

notebooks: setup
	$(BIN)/python scripts/execute_notebooks.py $(NOTEBOOKS)

# What AND achieves, judged by exact densities and the PF-ODE likelihood: docs/results-and.md (≈ 31 min).
study-and: setup
	$(BIN)/python -m superdiff.and_study

# The digits report (docs/results-digits.md + docs/figures/, ≈ 1 min) and the shipped digits weights (≈ 9 min
# on one thread; the times are in their README); without --out both commands write to the working directory.
results-digits: setup
	$(BIN)/python -m superdiff.digits.experiments --out docs/results-digits.md

weights: setup
	$(BIN)/python -m superdiff.digits.train --out superdiff/digits/weights

lab: setup
	$(BIN)/jupyter lab notebooks/

# The playground as a web page for teaching sessions: controls and plots, no code (Voilà, superdiff/app.py).
# On localhost for one teacher; APP_HOST=0.0.0.0 is classroom mode: a token, the URL to share printed, at most
# 36 open pages (fewer where memory holds fewer), idle ones closed (README "Teaching with the app"). More options: APP_ARGS="--max-kernels 20".
app: setup
	$(BIN)/python -m superdiff.app --host $(APP_HOST) --port $(APP_PORT) $(APP_ARGS)

clean:
	rm -rf $(VENV) $(W7) outputs .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
