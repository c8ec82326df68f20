"""`--simulate PROFILE --fast-forward [--workers N]`: simulated workers on a virtual clock.

Each worker is what `python -m search.worker` runs (search/worker.py: `open_worker`, `search`),
on a thread of this process, all on one storage and one `VirtualClock` (search/clock.py): time
stands still while any of them asks, samples or tells, and moves, when all of them sleep through
a simulated run, to the earliest end of one. So N workers meet the storage and the sampler in the
order N real ones would, and a 14-minute search of 16 simulated GPUs takes as long as its service
work does: what search-quality experiments of many searches need (benchmarks/bench_regret.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from search.clock import VirtualClock


def run_on_virtual_clock(count: int, clock: VirtualClock, body: Callable[[int], int]) -> int:
    """Run `body(index)` for index 0..count-1, each on a thread joined to `clock`; returns the
    largest exit code (an exception in one re-raises once all have ended)."""
    codes: list[int] = [0] * count
    errors: list[BaseException] = []

    def one(index: int) -> None:
        try:
            codes[index] = body(index)
        except BaseException as error:
            errors.append(error)
        finally:
            clock.leave()

    threads = [
        threading.Thread(target=one, args=(index,), name=f"simulated-worker-{index}")
        for index in range(count)
    ]
    for _ in threads:
        clock.join()  # every worker counts from the start, so none runs ahead of the others
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return max(codes)
