"""``make bench``: every benchmark in turn, each printing its table (ours beside its peers
where it has any) and writing its plots to docs/img/.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/resilience_crm \\
    REDIS_URL=redis://127.0.0.1:6379/1 .venv/bin/python bench/run.py \\
        [--quick] [--only NAME ...] [--plots DIR]

The benchmarks get a PostgreSQL database of their own on the server ``DATABASE_URL`` names,
``rcrm_bench`` (created if missing; ``BENCH_DATABASE_URL`` names another): some of them
empty their tables. ``REDIS_URL`` is used as it is: each benchmark keeps its keys under a
prefix of its own and deletes them. ``--quick`` runs each with tiny sizes, a few seconds
each, to show it still works (tests/test_bench.py); its figures mean nothing.
``make chaos`` (bench/chaos.py) is not among them: it runs for about ten minutes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import plots  # bench/ is on sys.path
from chaos import create_database

HERE = Path(__file__).resolve().parent
#: Each benchmark: its script, its arguments for make bench, and for --quick.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "closed_path": ([], ["--calls", "200", "--rounds", "2", "--samples", "200"]),
    "propagation": ([], ["--workers", "2", "--rounds", "1"]),
    "ratelimit": ([], ["--decisions", "200", "--users", "20", "--rounds", "2",
                       "--table-rows", "100"]),
    "provider": ([], ["--calls", "20", "--rounds", "2"]),
    "write_path": ([], ["--rounds", "1", "--batch", "3"]),
    "write_layers": ([], ["--rounds", "1", "--batch", "3"]),
    "live_blackholed": ([], ["--requests", "20", "--ready", "1"]),
    "guard": ([], ["--statements", "20", "--rounds", "3"]),
    "deadlines": (["--calls", "5"], ["--calls", "1", "--call-timeout", "0.5"]),
    "footprint": ([], ["--circuits", "20", "--users", "50", "--minutes", "2"]),
}
#: The benchmarks that draw plots (they take --plots).
PLOTTED = ("closed_path", "ratelimit", "provider", "write_path", "live_blackholed")


def bench_database(url: str) -> str:
    """``BENCH_DATABASE_URL``, or ``url``'s server with the database ``rcrm_bench``."""
    return os.environ.get("BENCH_DATABASE_URL") or urlunsplit(
        urlsplit(url)._replace(path="/rcrm_bench"))


def command(name: str, quick: bool, images: Path) -> list[str]:
    full, tiny = BENCHMARKS[name]
    extra = ["--plots", str(images)] if name in PLOTTED else []
    return [sys.executable, str(HERE / f"{name}.py"), *(tiny if quick else full), *extra]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: does each still run")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)})")
    parser.add_argument("--plots", type=Path, default=plots.IMAGES, help="where to write SVG")
    args = parser.parse_args()
    database = bench_database(os.environ.get(
        "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/resilience_crm"))
    env = {**os.environ, "DATABASE_URL": database,
           "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1")}
    create_database(database)
    failed = []
    for name in args.only or BENCHMARKS:
        argv = command(name, args.quick, args.plots)
        print(f"\n== bench/{name}.py {' '.join(argv[2:])}", flush=True)
        started = time.monotonic()
        if subprocess.run(argv, env=env, check=False).returncode:  # noqa: S603  (ours)
            failed.append(name)
        print(f"   ({time.monotonic() - started:.0f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
