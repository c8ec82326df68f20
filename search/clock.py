"""The worker's clocks: the real one, and a virtual one for simulated searches that do not sleep.

`SystemClock` is `time`. `VirtualClock` is a conservative discrete-event clock shared by the
threads of simulated workers in one process (`--simulate PROFILE --fast-forward`, search/fleet.py):
time stands still while any of them works (asks, tells, samples: the service's work takes no
simulated time) and jumps, when all of them sleep, to the earliest wake-up, waking that one
worker alone. So the workers meet the storage and the sampler in the order their simulated runs
would end, as N real workers would, however slow the host is, and a 14-minute search of 16
workers takes as long as its service work does. Work handed to another thread (--prefetch's) is
counted by `busy`, so time does not move while it is pending.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM = SystemClock()


class VirtualClock:
    """Virtual seconds for `participants` threads, each of which calls `join` first and `leave`
    last. `time()` starts at `start` (a wall-clock epoch), `monotonic()` at 0."""

    def __init__(self, start: float | None = None) -> None:
        self._start = time.time() if start is None else start
        self._now = 0.0
        self._condition = threading.Condition()
        self._running = 0  # joined threads not asleep
        self._busy = 0  # jobs pending on other threads
        self._sleepers: list[tuple[float, int, threading.Event]] = []
        self._order = itertools.count()  # ties wake in the order they fell asleep

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._start + self._now

    def join(self) -> None:
        with self._condition:
            self._running += 1

    def leave(self) -> None:
        with self._condition:
            self._running -= 1
            self._advance()

    def sleep(self, seconds: float) -> None:
        woken = threading.Event()
        with self._condition:
            heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._order), woken))
            self._running -= 1
            self._advance()
        woken.wait()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Around work submitted to another thread: from submission to its end."""
        with self._condition:
            self._busy += 1
        try:
            yield
        finally:
            with self._condition:
                self._busy -= 1
                self._advance()

    def hold(self) -> None:
        """Count one pending job (`release` ends it); for work whose start and end are in two threads."""
        with self._condition:
            self._busy += 1

    def release(self) -> None:
        with self._condition:
            self._busy -= 1
            self._advance()

    def _advance(self) -> None:
        if self._running == 0 and self._busy == 0 and self._sleepers:
            wake, _, woken = heapq.heappop(self._sleepers)
            self._now = max(self._now, wake)
            self._running += 1
            woken.set()
