# SuperDiff kit. `make demo` and `make test` each work from a fresh clone (they run `setup` first).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first and pinned: here it installs the local CPU wheel in seconds; on a CUDA machine PyPI's
# torch==2.13.0 is the CUDA build. Override for other platforms, e.g. `make setup TORCH="torch==2.5.1"`.
TORCH  ?= torch==2.13.0
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))

.PHONY: setup demo test lint pytest nbval notebooks lab clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
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
	$(BIN)/python -m pytest -q

nbval: setup
	$(if $(NOTEBOOKS),$(BIN)/python -m pytest -q --nbval $(NOTEBOOKS) --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider,@echo "no notebooks yet")

test: lint pytest nbval

notebooks: setup
	$(BIN)/python scripts/execute_notebooks.py $(NOTEBOOKS)

lab: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
