"""``make chaos``: the demo under gunicorn (4 workers) under a steady mixed load from users of
every tier, while a fault proxy in front of PostgreSQL and then of Redis cuts, stalls and
slows them, and while workers are killed with SIGKILL.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/rcrm_chaos \\
    REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python bench/chaos.py [--short] [--scenario NAME ...] [--seconds S]

The database is created if it is missing, migrated, and seeded (``seed_demo``: small). Per
scenario it prints the reads answered (fresh, stale, replica, degraded), the answers by
status, latency against the call budget, the time to open and to recover, the writes
acknowledged / applied / duplicated / lost (checked in the database once the fault is gone),
the alerts per incident (a local Sentry ingest server), and the targets with PASS or FAIL;
then one Markdown table of them all (docs/benchmarks.md keeps the latest), and writes the
answers per second through each scenario, by outcome, the fault shaded, as an SVG
(``--plot``, default docs/img/chaos-throughput.svg). Exits 1 when a target failed. The
machinery is in ``tests/chaos/``; tests/test_chaos.py runs its short form.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import plots  # noqa: E402  (bench/ is on sys.path)

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/rcrm_chaos")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
KEY_PREFIX = "rcrm-chaos"


def create_database(url: str) -> None:
    """Create the database ``url`` names unless it exists (connected to ``postgres``)."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  [name]).fetchone():
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def setup() -> None:
    """Django as the workers have it, but on the services directly and without the query
    guard: the runner's own statements (the audit, the settling) reach the database past
    the fault proxy, so through crm.db they would count as the workers' half-open trials
    and close it mid-outage, and while it is open they would be refused."""
    from tests.chaos.config import resilience

    os.environ.update({"DJANGO_SETTINGS_MODULE": "tests.server_settings",
                       "DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL,
                       "CACHE_KEY_PREFIX": KEY_PREFIX,
                       "RESILIENCE_CRM_JSON": json.dumps({**resilience(),
                                                          "PROTECT_QUERIES": {}})})
    os.environ.pop("SENTRY_DSN", None)  # the runner sends no alerts of its own
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    call_command("seed_demo", contacts=200, conversations=100, no_progress=True,
                 stdout=io.StringIO())  # it lists the tier users' tokens


def machine() -> str:
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def throughput_plot(outcomes: list, workers: int) -> str:
    """The answers per second through each scenario, by outcome, the fault shaded."""
    from tests.chaos import report

    timelines = []
    for outcome in outcomes:
        start, counts = report.throughput(outcome)
        timelines.append(plots.Timeline(
            outcome.scenario.name, start, 1.0, outcome.restored_at - outcome.fault_at, counts))
    return plots.timeline(f"Answers per second through the chaos run (gunicorn, {workers} "
                          f"workers), {datetime.datetime.now(datetime.UTC):%Y-%m-%d}",
                          report.OUTCOMES, timelines)


def main() -> int:
    from tests.chaos import scenarios

    names = [s.name for s in scenarios.FULL]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the suite's short run")
    parser.add_argument("--scenario", action="append", choices=names, metavar="NAME",
                        help=f"run only these ({', '.join(names)})")
    parser.add_argument("--seconds", type=float, help="how long each fault lasts")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--plot", type=Path, default=plots.IMAGES / "chaos-throughput.svg",
                        help="where to write the throughput plot (SVG)")
    args = parser.parse_args()
    chosen = list(scenarios.SHORT if args.short else scenarios.FULL)
    if args.scenario:
        chosen = [s for s in scenarios.FULL if s.name in args.scenario]
    if args.seconds:
        chosen = [scenarios.Scenario(s.name, s.target, s.fault, s.kills, args.seconds)
                  for s in chosen]

    create_database(DATABASE_URL)
    setup()
    from tests.chaos import report
    from tests.chaos.run import Stage

    print(f"chaos run {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {machine()}; "
          f"gunicorn {args.workers} sync workers", flush=True)
    outcomes = []
    with Stage(DATABASE_URL, REDIS_URL, KEY_PREFIX, workers=args.workers,
               say=lambda text: print(text, flush=True)) as stage:
        for index, scenario in enumerate(chosen):
            outcome = stage.run(scenario, index)
            outcomes.append(outcome)
            print("\n".join(report.describe(outcome)) + "\n", flush=True)
    print("\n".join(report.summary(outcomes)))
    plots.save(throughput_plot(outcomes, args.workers), args.plot)
    ok = report.passed(outcomes)
    print("\nevery target met" if ok else "\nsome targets missed (FAIL above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
