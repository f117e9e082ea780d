"""Every benchmark of ``make bench`` still runs: each in its quick mode (``bench/run.py
--quick``, tiny sizes, a few seconds), against the real services, in a process of its own as
``make bench`` runs it; the plots it draws are well-formed SVG. The figures themselves are
the benchmarks' business (docs/benchmarks.md). The chaos run's plot (``make chaos``, ten
minutes) is drawn here from a made-up run; tests/test_chaos.py checks the figures it is
drawn from on a real one."""

from __future__ import annotations

import ast
import importlib.util
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


def bench_plots():
    """bench/plots.py (bench/ is no package: its scripts find it on their own path)."""
    spec = importlib.util.spec_from_file_location("bench_plots", ROOT / "bench" / "plots.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules["bench_plots"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chaos_timeline_shades_the_fault_and_stacks_the_outcomes():
    plots = bench_plots()
    counts = [(30, 0, 0, 0)] * 3 + [(10, 15, 4, 1)] * 5 + [(30, 0, 0, 0)] * 4
    svg = plots.timeline("chaos", ("answered", "from fallback", "refused", "failed"),
                         [plots.Timeline("database cut", -3.0, 1.0, 5.0, counts)])
    root = ElementTree.fromstring(svg)  # noqa: S314  (drawn here)
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert titles.count("fault") == 1
    assert len([t for t in titles if t.endswith(" answered")]) == 12
    assert [t for t in titles if t.endswith(" from fallback")] == [
        f"+{n} s: 15 from fallback" for n in range(5)]
    assert len([t for t in titles if t.endswith(" failed")]) == 5


def test_every_script_of_bench_is_run_or_named():
    scripts = {path.stem for path in (ROOT / "bench").glob("*.py")}
    helpers = {"run", "plots", "plain_drf", "redis_django", "chaos", "tier_rows"}
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
        root = ElementTree.parse(path).getroot()  # noqa: S314  (the script drew it)
        assert root.tag == f"{SVG}svg"
        assert root.findall(f".//{SVG}polyline"), f"{path.name}: no line drawn"
