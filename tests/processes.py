"""Real worker processes for concurrency tests: forked, lined up by the caller's barriers.

They end with ``os._exit``, which would lose what a ``multiprocessing.Queue`` still holds in
its feeder thread: they report through a :class:`multiprocessing.SimpleQueue` (``ctx``'s),
whose ``put`` is in the pipe when it returns."""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback

ctx = multiprocessing.get_context("fork")


def run_processes(target, *args, count=8, timeout=60):
    """Run ``target(index, *args)`` in ``count`` forked processes; fail on any error."""
    errors = ctx.SimpleQueue()

    def main(index):
        try:
            target(index, *args)
        except BaseException:
            errors.put(traceback.format_exc())
            os._exit(1)
        os._exit(0)

    processes = [ctx.Process(target=main, args=(i,)) for i in range(count)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.1, deadline - time.monotonic()))
    alive = [p for p in processes if p.is_alive()]
    for process in alive:
        process.kill()
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not alive, f"{len(alive)} processes did not finish in {timeout}s"
    assert not problems, "\n".join(problems)
    assert all(p.exitcode == 0 for p in processes)
