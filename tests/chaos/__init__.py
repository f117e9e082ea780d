"""The chaos run: the demo under gunicorn, a steady mixed load, and faults (PostgreSQL and
Redis cut, stalled or slowed behind a fault proxy; workers killed with SIGKILL), then the
database and the alerts checked against what clients were told. ``bench/chaos.py``
(``make chaos``) runs every scenario and prints the figures; tests/test_chaos.py runs the
short form and asserts what holds on any machine.

- ``scenarios``: the scenarios and the faults they apply (start here);
- ``config``: the workers' breaker settings and the targets they imply;
- ``load``: the clients of every tier and what each answer was;
- ``run``: the stage (server, proxies, Sentry ingest server) and running a scenario;
- ``audit``: writes against the database, alerts against incidents;
- ``report``: the figures, the targets, the printed tables.
"""
