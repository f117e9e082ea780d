"""The package's shape: no import circle, arrows between features one way, and every dotted
path users write in their settings still importable (the stores' old paths warning once).

Imports are read with ``ast`` from the source, inside functions and under ``TYPE_CHECKING``
too: an import moved into a function, or kept for the type checker, to dodge a circle is
still a circle."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "resilience_crm"
FEATURES = ("breakers", "ratelimit", "provider", "observability", "admin", "guard")
#: (from, to) feature arrows the layout allows; any other arrow between features fails.
ALLOWED = {
    ("provider", "breakers"),
    ("ratelimit", "breakers"),  # adaptive limits read the circuits' state
    ("observability", "breakers"),
    ("observability", "provider"),  # queue depth
    ("guard", "breakers"),
    *(("admin", feature) for feature in FEATURES),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")
            if "migrations" not in path.parts}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules ``path`` imports when it runs."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [f"{node.module}.{alias.name}" for alias in node.names]
            # ``from package import module`` runs the package's ``__init__`` too: an arrow to
            # the feature package (the top package's ``__init__`` is the public API, and
            # every module imports the shared ones through it).
            if node.module != "resilience_crm":
                targets.append(node.module)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known:
                found.add(target)
    found.discard(module_name(path))
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def feature(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FEATURES else None


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def forbidden_arrows(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{source} -> {target}" for source, targets in edges.items()
                  for target in targets
                  if (feature(source) and feature(target) and feature(source) != feature(target)
                      and (feature(source), feature(target)) not in ALLOWED))


def test_the_package_has_no_import_circle() -> None:
    assert circles(graph()) == []


def test_arrows_between_features_run_one_way() -> None:
    assert forbidden_arrows(graph()) == []


def test_the_models_import_only_pure_leaves() -> None:
    edges = graph()
    assert edges["resilience_crm.models"] <= {
        "resilience_crm.breakers", "resilience_crm.breakers.machine",
        "resilience_crm.breakers.config", "resilience_crm.ratelimit",
        "resilience_crm.ratelimit.rates", "resilience_crm.constants"}


def test_the_checks_find_a_circle_and_a_forbidden_arrow() -> None:
    edges = {"resilience_crm.breakers.breaker": {"resilience_crm.provider.facade"},
             "resilience_crm.provider.facade": {"resilience_crm.breakers.breaker"},
             "resilience_crm.ratelimit.limiter": {"resilience_crm.admin.dashboard"},
             "resilience_crm.admin.dashboard": set()}
    assert circles(edges) == [["resilience_crm.breakers.breaker",
                               "resilience_crm.provider.facade"]]
    assert forbidden_arrows(edges) == [
        "resilience_crm.breakers.breaker -> resilience_crm.provider.facade",
        "resilience_crm.ratelimit.limiter -> resilience_crm.admin.dashboard"]


def test_each_feature_folder_says_what_it_is() -> None:
    for name in FEATURES:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert doc and ".py" in doc, f"{name}/__init__.py should say which module to open first"


#: Dotted paths users write in their settings, and the public imports; none may move.
SETTINGS_PATHS = [
    "resilience_crm.routers.ResilienceRouter",
    "resilience_crm.throttling.TierRateThrottle",
    "resilience_crm.throttling.bulk",
    "resilience_crm.middleware.ResilienceMiddleware",
    "resilience_crm.drf.exception_handler",
    "resilience_crm.drf.FallbackHeadersMixin",
    "resilience_crm.health_check.Circuits",
    "resilience_crm.testutils.override_circuit",
    "resilience_crm.transactions.non_atomic",
    "resilience_crm.cache_serializer.SignedJSONSerializer",
    "resilience_crm.provider.protected",
    "resilience_crm.protected",
    "resilience_crm.get_breaker",
    "resilience_crm.guard.backends.postgresql.base.DatabaseWrapper",
    "resilience_crm.guard.backends.sqlite3.base.DatabaseWrapper",
]


@pytest.mark.parametrize("path", SETTINGS_PATHS)
def test_the_paths_users_write_still_import(path: str) -> None:
    module, _, name = path.rpartition(".")
    assert getattr(importlib.import_module(module), name) is not None


#: The stores' old module paths (settings name their classes), each an alias of its new home.
OLD_STORE_PATHS = {
    "resilience_crm.stores.base.BaseStore": "resilience_crm.breakers.stores.base",
    "resilience_crm.stores.memory.MemoryStore": "resilience_crm.breakers.stores.memory",
    "resilience_crm.stores.database.DatabaseStore": "resilience_crm.breakers.stores.database",
    "resilience_crm.stores.redis.RedisStore": "resilience_crm.breakers.stores.redis",
    "resilience_crm.stores.failover.FailoverStore": "resilience_crm.breakers.stores.failover",
    "resilience_crm.stores.lua.LuaScript": "resilience_crm.lua",
    "resilience_crm.stores.ratelimit_base.BaseLimiterStore": "resilience_crm.ratelimit.stores.base",
    "resilience_crm.stores.ratelimit_memory.MemoryLimiterStore":
        "resilience_crm.ratelimit.stores.memory",
    "resilience_crm.stores.ratelimit_redis.RedisLimiterStore":
        "resilience_crm.ratelimit.stores.redis",
}


@pytest.mark.parametrize(("old", "new"), OLD_STORE_PATHS.items())
def test_old_store_paths_are_aliases_that_warn_once(old: str, new: str) -> None:
    """In a fresh interpreter, so the first import (the one that warns) is this test's."""
    module, _, name = old.rpartition(".")
    script = (
        "import warnings, importlib, django, os\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')\n"
        "django.setup()\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    first = getattr(importlib.import_module({module!r}), {name!r})\n"
        f"    again = getattr(importlib.import_module({module!r}), {name!r})\n"
        f"assert first is again is getattr(importlib.import_module({new!r}), {name!r})\n"
        "deprecations = [w for w in caught if w.category is DeprecationWarning\n"
        f"                and {module!r} in str(w.message)]\n"
        "assert len(deprecations) == 1, [str(w.message) for w in caught]\n"
        f"assert {new!r} in str(deprecations[0].message)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
