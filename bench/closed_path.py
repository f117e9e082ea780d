"""Closed-path overhead per call: resilience_crm's breaker beside pybreaker, both on one Redis.

    REDIS_URL=redis://127.0.0.1:6379/1 .venv/bin/python bench/closed_path.py [--calls N]

Each side wraps the same trivial function; the overhead is the time per call above calling
the function bare. pybreaker keeps its state in Redis with ``CircuitRedisStorage`` and reads
it on every call; resilience_crm asks Redis only when its local snapshot goes stale
(``SNAPSHOT_TTL``) or a batch of successes is due. The run prints both and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

from redis_django import setup  # noqa: E402  (bench/ is on sys.path)


def work() -> int:
    return 1


def per_call_ns(call, calls: int, rounds: int) -> float:
    """The median over ``rounds`` of the mean time per call, in nanoseconds."""
    results = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for _ in range(calls):
            call(work)
        results.append((time.perf_counter_ns() - started) / calls)
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    setup()

    import pybreaker
    from django_redis import get_redis_connection

    from resilience_crm import get_breaker

    ours = get_breaker("bench.closed")
    ours.store.clear("bench.closed")
    ours.call(work)  # fetch the first snapshot

    redis = get_redis_connection("default")
    peer = pybreaker.CircuitBreaker(
        fail_max=5, reset_timeout=30,
        state_storage=pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, redis,
                                                    namespace="rcrm-bench-pybreaker"),
    )
    peer.call(work)

    bare = per_call_ns(lambda fn: fn(), args.calls, args.rounds)
    ours_ns = per_call_ns(ours.call, args.calls, args.rounds)
    peer_ns = per_call_ns(peer.call, args.calls, args.rounds)
    ours_over, peer_over = ours_ns - bare, peer_ns - bare

    print(f"closed-path overhead per call ({args.calls} calls x {args.rounds} rounds, median)")
    print(f"  bare function        {bare:10.0f} ns")
    print(f"  resilience_crm       {ours_over:10.0f} ns  (redis store, snapshot "
          f"ttl {ours.snapshot_ttl}s)")
    print(f"  pybreaker + redis    {peer_over:10.0f} ns  (CircuitRedisStorage)")
    print(f"  ratio pybreaker / resilience_crm: {peer_over / ours_over:.1f}x")


if __name__ == "__main__":
    main()
