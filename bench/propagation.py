"""How long a forced state takes to reach every worker process, on the real Redis.

    REDIS_URL=redis://127.0.0.1:6379/1 .venv/bin/python bench/propagation.py [--workers N]

N forked workers poll their breaker's state (each read refreshes the snapshot once it is
older than ``SNAPSHOT_TTL``, 0.5 s); the parent forces the circuit open and each worker
reports how long after that it saw the change. The promise is "within one second"; the
suite checks the same path with a bound a loaded machine can keep (tests/test_cluster.py).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

from redis_django import setup  # noqa: E402  (bench/ is on sys.path)

CIRCUIT = "bench.propagation"
TTL = 0.5


def watch(index, workers, barrier, forced_at, seen) -> None:
    from resilience_crm.breakers import registry

    registry.clear()
    breaker = registry.get_breaker(CIRCUIT)
    barrier.wait()
    time.sleep(index * TTL / workers)  # so the snapshots are of every age when it changes
    assert breaker.state == "closed"
    while breaker.state != "forced_open":
        time.sleep(0.001)
    seen.put(time.time() - forced_at.value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    setup(SNAPSHOT_TTL=TTL)
    from resilience_crm.breakers import registry

    ctx = multiprocessing.get_context("fork")
    delays: list[float] = []
    for _ in range(args.rounds):
        registry.get_breaker(CIRCUIT).reset()
        barrier = ctx.Barrier(args.workers + 1)
        forced_at, seen = ctx.Value("d", 0.0), ctx.Queue()
        workers = [ctx.Process(target=watch, args=(i, args.workers, barrier, forced_at, seen))
                   for i in range(args.workers)]
        for worker in workers:
            worker.start()
        barrier.wait()
        time.sleep(TTL * 1.2)  # every worker has read the state once
        forced_at.value = time.time()
        registry.get_breaker(CIRCUIT).force("forced_open", reason="bench")
        delays += [seen.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join()
    registry.get_breaker(CIRCUIT).reset()
    print(f"{args.workers} workers x {args.rounds} rounds, SNAPSHOT_TTL 0.5 s")
    print(f"median {statistics.median(delays) * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms (promise: under 1000 ms)")


if __name__ == "__main__":
    main()
