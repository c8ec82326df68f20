"""--prefetch: the storage work of the trials around the one training, on a background thread.

On by default for a GPU worker: the device trains and a CPU core is free, while the storage work
between two short trials would leave the GPU idle for a large share of the wall time
(docs/performance.md). Off for a CPU worker, whose timed run would share its cores with this
thread.

While trial N trains on the main thread, one background thread first ends trial N-1 (record and
tell: search/loop.py's `end`) and then begins trial N+1 (ask and plan: `begin`). The sampler sees
every trial but the one training, as it would with one more worker, and Optuna's constant liar
keeps that consistent. A stop by signal or --timeout finds trial N+1 already asked: it is told
FAILED, "not run: ...", never left RUNNING (`release`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial

from objective.optuna_objective import Objective
from search.clock import Clock, VirtualClock
from search.heartbeat import Heartbeat
from search.loop import Begun, Ending, Stops, begin, end, release, train

T = TypeVar("T")


class Background:
    """One daemon thread running jobs in order. A daemon, so that a worker giving up on a dead
    database exits at once instead of waiting out the retries of a job still queued. On a virtual
    clock a job counts from its submission to its end, so simulated time waits for it."""

    def __init__(self, on_start: Callable[[], None], clock: Clock) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._on_start = on_start
        self._virtual = clock if isinstance(clock, VirtualClock) else None
        self._pending: list[Future[Any]] = []
        threading.Thread(target=self._work, name="prefetch", daemon=True).start()

    def submit(self, job: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        if self._virtual is not None:
            self._virtual.hold()
        self._jobs.put((future, job))
        self._pending.append(future)
        return future

    def check(self, wait: bool = False) -> None:
        """Raise the error of a finished job (a storage failure ends the worker); `wait` for all."""
        if wait:
            for future in self._pending:
                future.exception()
        done = [future for future in self._pending if future.done()]
        self._pending = [future for future in self._pending if not future.done()]
        for future in done:
            if (error := future.exception()) is not None:
                raise error

    def close(self) -> None:
        self._jobs.put(None)

    def _work(self) -> None:
        self._on_start()
        while (item := self._jobs.get()) is not None:
            future, job = item
            try:
                future.set_result(job())
            except BaseException as error:
                future.set_exception(error)
            finally:
                if self._virtual is not None:
                    self._virtual.release()


def run_trials_prefetching(study: optuna.Study, objective: Objective, heartbeat: Heartbeat, stops: Stops,
                           attrs: Mapping[str, Any], on_told: Callable[[FrozenTrial], None],
                           on_released: Callable[[FrozenTrial], None],
                           adopt_thread: Callable[[], None]) -> str:
    """search/loop.py's `run_trials`, with trial N+1 begun and trial N-1 ended while trial N
    trains. `adopt_thread` lets the background thread's storage calls be retried. Returns why it
    stopped."""
    background = Background(adopt_thread, stops.clock)

    def begin_unless_budget(running: int) -> Begun | str:
        reason = stops.budget_reason(study, running)
        return reason if reason is not None else begin(study, objective, heartbeat, attrs)

    def release_now(begun: Begun, why: str) -> None:
        on_released(background.submit(lambda: release(study, begun, why, heartbeat)).result())

    def end_and_count(begun: Begun, ending: Ending) -> None:
        told = end(study, objective, begun, ending, heartbeat)
        stops.count(told)
        on_told(told)

    upcoming: Future[Begun | str] | None = None
    reason: str | None = None
    train_seconds = 0.0
    try:
        while reason is None:
            if upcoming is None:
                if (reason := stops.own_reason()) is not None:
                    break
                upcoming = background.submit(lambda: begin_unless_budget(running=0))
            begun, upcoming = upcoming.result(), None
            background.check()
            if isinstance(begun, str):
                reason = begun
            elif (reason := stops.own_reason()) is not None:
                release_now(begun, reason)
            else:
                if stops.own_reason(ahead=train_seconds, running=1) is None:
                    upcoming = background.submit(lambda: begin_unless_budget(running=1))
                stops.ran += 1
                started = stops.clock.monotonic()
                ending = train(objective, begun)
                train_seconds = stops.clock.monotonic() - started
                background.submit(lambda b=begun, e=ending: end_and_count(b, e))
                if stops.graceful_stop.aborted:
                    reason = f"aborted on a second {stops.signal_name}"
        if upcoming is not None and isinstance(asked := upcoming.result(), Begun):
            release_now(asked, reason)
        background.check(wait=True)
        return reason
    finally:
        background.close()
