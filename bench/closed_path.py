"""Closed-path overhead per call: resilience_crm's breaker beside pybreaker's, in memory and
on Redis, in one run, interleaved.

    REDIS_URL=redis://127.0.0.1:6379/1 .venv/bin/python bench/closed_path.py \\
        [--calls N] [--rounds N] [--samples N] [--plots DIR] [--profile]

Each side wraps the same trivial function; the overhead is the time per call above calling
the function bare. resilience_crm uses its Redis store, shared by every worker: it asks
Redis only when its local snapshot goes stale (``SNAPSHOT_TTL``) or a batch of successes is
due, and times every call for the per-minute latency metric. pybreaker in memory
(``CircuitMemoryStorage``, its default) is one process's breaker and shares nothing;
``CircuitRedisStorage`` reads its state from Redis on every call.

The sides take turns in rounds of ``--calls`` calls (the order rotates each round) after a
warm-up round, so a busy machine slows them alike; each side's figure is the median over
the rounds, and the ratios come from those medians. pybreaker on Redis is about a hundred
times slower and runs a tenth of the calls. Then each side's calls are timed one by one,
``--samples`` of them (a tenth on Redis), in the same turns, for the latency distribution it
draws in ``--plots`` (default docs/img/), ``closed-path.svg``: each call with the timer's own
cost (the bare function's line shows it). ``--profile`` prints where resilience_crm's closed
call spends its time instead (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import plots  # bench/ is on sys.path
from redis_django import setup

#: The sides as the plot names them.
LABELS = {"resilience_crm": "resilience_crm (Redis store, shared)",
          "pybreaker memory": "pybreaker, in memory (one process)",
          "pybreaker redis": "pybreaker, CircuitRedisStorage",
          "bare": "the bare function"}


def work() -> int:
    return 1


def per_call_ns(call: Callable[[Callable[[], int]], object], calls: int) -> float:
    """The mean time of ``calls`` calls of ``call(work)``, in nanoseconds."""
    started = time.perf_counter_ns()
    for _ in range(calls):
        call(work)
    return (time.perf_counter_ns() - started) / calls


def each_call_ns(call: Callable[[Callable[[], int]], object], calls: int) -> list[int]:
    """``calls`` calls of ``call(work)``, each timed on its own, in nanoseconds."""
    clock = time.perf_counter_ns
    samples = []
    for _ in range(calls):
        started = clock()
        call(work)
        samples.append(clock() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--samples", type=int, default=20_000,
                        help="calls per side timed one by one for the plot")
    parser.add_argument("--plots", type=Path, default=plots.IMAGES, help="where to write SVG")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    setup()

    import pybreaker
    from django_redis import get_redis_connection

    from resilience_crm import get_breaker

    ours = get_breaker("bench.closed")
    ours.store.clear("bench.closed")
    ours.call(work)  # fetch the first snapshot
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(per_call_ns, ours.call, args.calls * 10)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
        return

    memory = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    redis = pybreaker.CircuitBreaker(
        fail_max=5, reset_timeout=30,
        state_storage=pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, get_redis_connection("default"),
            namespace="rcrm-bench-pybreaker"),
    )
    sides: dict[str, tuple[Callable[[Callable[[], int]], object], int]] = {
        "bare": (lambda fn: fn(), args.calls),
        "resilience_crm": (ours.call, args.calls),
        "pybreaker memory": (memory.call, args.calls),
        "pybreaker redis": (redis.call, max(1, args.calls // 10)),
    }
    results: dict[str, list[float]] = {name: [] for name in sides}
    samples: dict[str, list[int]] = {name: [] for name in sides}
    names = list(sides)
    for number in range(args.rounds + 1):
        for name in names[number % len(names):] + names[:number % len(names)]:
            call, calls = sides[name]
            took = per_call_ns(call, calls)
            if number:  # round 0 warms up
                results[name].append(took)
                share = args.samples * calls // args.calls // args.rounds
                samples[name] += each_call_ns(call, max(1, share))

    bare = statistics.median(results["bare"])
    over = {name: statistics.median(results[name]) - bare for name in names[1:]}
    print(f"closed-path overhead per call ({args.calls} calls x {args.rounds} rounds, sides "
          "interleaved, median)")
    print(f"  bare function        {bare:10.0f} ns")
    print(f"  resilience_crm       {over['resilience_crm']:10.0f} ns  (redis store, snapshot "
          f"ttl {ours.snapshot_ttl}s, latency metric on)")
    print(f"  pybreaker memory     {over['pybreaker memory']:10.0f} ns  (CircuitMemoryStorage)")
    print(f"  pybreaker redis      {over['pybreaker redis']:10.0f} ns  (CircuitRedisStorage)")
    print(f"  resilience_crm / pybreaker memory: "
          f"{over['resilience_crm'] / over['pybreaker memory']:.2f}x")
    print(f"  pybreaker redis / resilience_crm: "
          f"{over['pybreaker redis'] / over['resilience_crm']:.0f}x")
    plots.save(plots.latency(
        "A closed breaker's call of a function that returns at once (timer included)",
        [("per call, one process, sides taking turns",
          {LABELS[name]: [ns / 1e9 for ns in samples[name]]
           for name in ("resilience_crm", "pybreaker memory", "pybreaker redis", "bare")})]),
        args.plots / "closed-path.svg")


if __name__ == "__main__":
    main()
