PYTHON ?= python3
VENV ?= .venv
PORT ?= 8000
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# make demo's environment (DATABASE_URL, REDIS_URL, SENTRY_DSN, the monitoring token),
# remembered for make drill, make status and a second shell (`. ./.demo.env`). What the
# caller's environment sets wins over it. See crm_demo/demo_env.py.
DEMO_ENV := .demo.env
WITH_DEMO_ENV = [ ! -f $(DEMO_ENV) ] || . $(abspath $(DEMO_ENV));

.PHONY: venv demo drill status forget test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e ".[postgres,sentry,health-check]" --group dev
	touch $(STAMP)

demo: venv
	$(WITH_DEMO_ENV) PORT=$(PORT) $(BIN)/python -m crm_demo.demo_env $(DEMO_ENV)
	$(WITH_DEMO_ENV) $(BIN)/python manage.py migrate --no-input
	$(WITH_DEMO_ENV) $(BIN)/python manage.py seed_demo --admin
	$(WITH_DEMO_ENV) $(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

drill: venv
	$(WITH_DEMO_ENV) $(BIN)/python manage.py resilience_drill

status: venv
	$(WITH_DEMO_ENV) $(BIN)/python manage.py resilience_status

forget:
	rm -f $(DEMO_ENV)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy resilience_crm crm_demo

# Every benchmark, ours beside its peers (the bench group's), on DATABASE_URL's server (in a
# database of its own, rcrm_bench) and REDIS_URL; the plots go to docs/img/ (docs/benchmarks.md).
bench: venv
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The demo under load while PostgreSQL, Redis and workers fail (docs/operations.md).
.PHONY: chaos
chaos: venv
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
