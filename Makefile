PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e . --group dev
	touch $(STAMP)

demo: venv
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py seed_demo --admin
	$(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy resilience_crm crm_demo

bench: venv
	$(BIN)/python bench/closed_path.py
	$(BIN)/python bench/propagation.py
	$(BIN)/python bench/ratelimit.py
	$(BIN)/python bench/live_blackholed.py
	$(BIN)/python bench/provider.py

# The demo under load while PostgreSQL, Redis and workers fail (docs/operations.md).
.PHONY: chaos
chaos: venv
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
