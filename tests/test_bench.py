"""Every benchmark of ``make bench`` still runs: each in its quick mode (``bench/run.py
--quick``, tiny sizes, a few seconds), against the real services, in a process of its own as
``make bench`` runs it; the plots it draws are well-formed SVG. The figures themselves are
the benchmarks' business (docs/benchmarks.md); the chaos run's plot is drawn by
tests/test_chaos.py's run."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from django.db import connection

from tests.databases import database_url

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"
SVG = "{http://www.w3.org/2000/svg}"


def table(name: str) -> ast.expr:
    """The value of bench/run.py's module-level ``name``, as written (not run)."""
    for node in ast.parse(RUN.read_text()).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                assert node.value is not None
                return node.value
    raise LookupError(name)


BENCHMARKS = ast.literal_eval(table("BENCHMARKS"))
PLOTTED = ast.literal_eval(table("PLOTTED"))


def test_every_script_of_bench_is_run_or_named():
    scripts = {path.stem for path in (ROOT / "bench").glob("*.py")}
    helpers = {"run", "plots", "plain_drf", "redis_django", "chaos"}
    assert scripts - helpers == set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_runs_in_quick_mode(name, tmp_path, transactional_db, postgres, redis_url):
    env = {**os.environ, "BENCH_DATABASE_URL": database_url(connection.settings_dict),
           "REDIS_URL": redis_url}
    connection.close()  # the scripts migrate and empty tables: no transaction of ours open
    done = subprocess.run([sys.executable, str(RUN), "--quick", "--only", name,
                           "--plots", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    written = [Path(p) for p in re.findall(r"plot: (\S+)", done.stdout)]
    assert bool(written) == (name in PLOTTED), done.stdout
    for path in written:
        assert path.parent == tmp_path
        root = ElementTree.parse(path).getroot()
        assert root.tag == f"{SVG}svg"
        assert root.findall(f".//{SVG}polyline"), f"{path.name}: no line drawn"
