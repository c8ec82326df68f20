"""The virtual clock (search/clock.py): simulated time stands still while anyone works and jumps
to the earliest wake-up when everyone sleeps, one sleeper at a time."""

from __future__ import annotations

import threading
import time

import pytest

from search.clock import VirtualClock
from search.fleet import run_on_virtual_clock


def test_workers_wake_in_the_order_their_sleeps_end(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = VirtualClock(start=1000.0)
    woke: list[tuple[int, float]] = []
    # Time passing for real in a simulated worker's thread: a sleep, or a wait that times out.
    real: list[float] = []
    real_sleep, real_wait = time.sleep, threading.Condition.wait
    workers: set[int] = set()  # their threads

    def simulated() -> bool:
        return threading.get_ident() in workers

    def sleep(seconds: float) -> None:
        if simulated():
            real.append(seconds)
        real_sleep(seconds)

    def wait(condition: threading.Condition, timeout: float | None = None) -> bool:  # Event.wait's too
        if simulated() and timeout is not None:
            real.append(timeout)
        return real_wait(condition, timeout)

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(threading.Condition, "wait", wait)

    def worker(index: int) -> int:
        workers.add(threading.get_ident())
        for _ in range(3):
            clock.sleep([1.0, 2.5, 0.7][index])
            woke.append((index, clock.monotonic()))
        return 0

    assert run_on_virtual_clock(3, clock, worker) == 0
    assert real == []  # 7.5 simulated seconds, nothing slept for real
    assert [at for _, at in woke] == sorted(at for _, at in woke)
    assert woke[:4] == [(2, 0.7), (0, 1.0), (2, 1.4), (0, 2.0)]
    assert clock.monotonic() == 7.5 and clock.time() == 1007.5


def test_time_waits_for_work_handed_to_another_thread() -> None:
    clock = VirtualClock()
    seen: list[float] = []

    def worker(index: int) -> int:
        if index == 0:
            clock.hold()  # a job submitted to a background thread: time must wait for it

            def job() -> None:
                time.sleep(0.2)  # real work, while worker 0 itself sleeps
                seen.append(clock.monotonic())
                clock.release()

            threading.Thread(target=job).start()
        clock.sleep(1.0 + index)
        return 0

    run_on_virtual_clock(2, clock, worker)
    assert seen == [0.0]


def test_an_error_in_one_worker_is_raised_after_the_others_end() -> None:
    clock = VirtualClock()
    ended: list[int] = []

    def worker(index: int) -> int:
        if index == 0:
            raise ValueError("boom")
        clock.sleep(5.0)
        ended.append(index)
        return 0

    with pytest.raises(ValueError, match="boom"):
        run_on_virtual_clock(2, clock, worker)
    assert ended == [1]
