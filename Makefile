# The two commands a newcomer needs: `make demo` and `make test`.
# Both set up .venv from pyproject.toml first (once, again when pyproject.toml changes).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/rollout demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check app tests
	$(BIN)/ruff format --check app tests
	$(BIN)/mypy

clean:
	-$(BIN)/rollout kafka stop
	rm -rf $(VENV) .rollout .mypy_cache .ruff_cache .pytest_cache
