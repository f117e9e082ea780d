"""``make demo``'s memory: the environment it ran with, in a file that ``make drill``,
``make status`` and a second shell read, so they work on the same database and Redis.

``python -m crm_demo.demo_env FILE`` writes FILE from the current environment (making a
monitoring token when there is none) and prints what it holds. Each line of FILE sets a
variable only where the shell does not have it already, so an explicit
``DATABASE_URL=... make demo`` wins over what was remembered (and is remembered next):

    if [ -z "${DATABASE_URL+set}" ]; then DATABASE_URL='postgres://...'; fi; export DATABASE_URL

``. ./FILE`` in a shell gives it the demo's environment; ``make forget`` removes the file.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from pathlib import Path

#: What the demo's processes read from the environment, remembered in this order.
REMEMBERED = ("DATABASE_URL", "REDIS_URL", "SENTRY_DSN", "RESILIENCE_MONITORING_TOKEN")
TOKEN = "RESILIENCE_MONITORING_TOKEN"  # noqa: S105  (the variable's name, not a secret)


def lines(environ: dict[str, str]) -> list[str]:
    """The file's lines for the variables of ``REMEMBERED`` that ``environ`` sets."""
    return [f'if [ -z "${{{name}+set}}" ]; then {name}={shlex.quote(environ[name])}; fi; '
            f"export {name}" for name in REMEMBERED if name in environ]


def write(path: Path, environ: dict[str, str]) -> dict[str, str]:
    """Remember ``environ``'s demo variables in ``path`` (a token made if it has none);
    returns what was remembered."""
    remembered = {name: environ[name] for name in REMEMBERED if environ.get(name)}
    remembered.setdefault(TOKEN, secrets.token_urlsafe(24))
    header = ("# make demo's environment (crm_demo/demo_env.py); `. ./" + path.name +
              "` gives a shell the same, `make forget` removes it")
    path.write_text("\n".join([header, *lines(remembered)]) + "\n", encoding="utf-8")
    path.chmod(0o600)  # a token and maybe passwords
    return remembered


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} FILE", file=sys.stderr)
        return 2
    path = Path(argv[1])
    remembered = write(path, dict(os.environ))
    database = remembered.get("DATABASE_URL", "SQLite file db.sqlite3")
    redis = remembered.get("REDIS_URL", "none (local-memory cache)")
    print(f"Remembered in {path} for make drill, make status and `. ./{path}`:\n"
          f"  database: {_masked(database)}\n  redis:    {_masked(redis)}\n"
          f"  monitoring token: {remembered[TOKEN]}\n"
          f"  try: curl -H \"Authorization: Bearer {remembered[TOKEN]}\" "
          f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/resilience/metrics")
    return 0


def _masked(url: str) -> str:
    head, at, tail = url.rpartition("@")
    if not at or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, credentials = head.rpartition("//")
    return f"{scheme}//{credentials.split(':', 1)[0]}:***@{tail}"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
