"""Where a worker's storage work runs: on the training thread between trials, or (--prefetch)
on a background thread while the trials train.

With --prefetch, while trial N trains on the main thread, one background thread first finishes
trial N-1 (its attributes and tell) and then starts trial N+1 (stale check, ask, suggest). The
sampler therefore sees every trial but the one training, as it would with one more worker, and
Optuna's constant liar keeps that consistent. When trial N ends, N+1 is ready: the worker spends
its time training, not waiting on the database (benchmarks/bench_duty_cycle.py measures it).

Costs, all written down in README: the background thread takes CPU (and Python's GIL) while the
clock of trial N runs; and a stop by signal or --timeout finds trial N+1 already asked, which is
then ended FAILED with the reason "not run: ...", never left RUNNING.

Without --prefetch the same jobs run inline, in order: start, run, finish.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial

from search.heartbeat import Heartbeat
from search.trials import Phases, Ran, Started, finish, release, start

T = TypeVar("T")
Job = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class Background:
    """One daemon thread running jobs in order. A daemon, so that a worker giving up on a dead
    database exits at once instead of waiting out the retries of a job still queued."""

    def __init__(self, on_start: Callable[[], None] | None) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._on_start = on_start
        self._thread = threading.Thread(target=self._work, name="storage", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, job, args))
        return future

    def close(self) -> None:
        self._jobs.put(None)

    def _work(self) -> None:
        if self._on_start is not None:
            self._on_start()
        while (item := self._jobs.get()) is not None:
            future, job, args = item
            _settle(future, job, args)


def _settle(future: Future[T], job: Callable[..., T], args: tuple[Any, ...]) -> None:
    try:
        future.set_result(job(*args))
    except BaseException as error:
        future.set_exception(error)


class Pipeline:
    def __init__(self, study: optuna.Study, phases: Phases[Any, Any], user_attrs: dict[str, Any],
                 prefetch: bool, on_finished: Callable[[FrozenTrial], None]) -> None:
        self.study = study
        self.phases = phases
        self.user_attrs = user_attrs
        self.on_finished = on_finished
        self.heartbeat = Heartbeat(study)
        # The background thread's storage calls are retried like the main thread's.
        adopt = getattr(study._storage, "adopt_thread", None)
        self._background = Background(adopt) if prefetch else None
        self._pending: list[Future[Any]] = []
        self._held: dict[int, int] = {}  # trial id -> number of each trial started, not yet told

    def held(self) -> list[int]:
        """Numbers of the trials this worker asked for and has not told yet."""
        return sorted(self._held.values())

    def start(self, may_start: Callable[[], str | None]) -> Future[Started[Any] | str]:
        """A started trial, or why none was started (`may_start()` said so, from the storage)."""

        def job() -> Started[Any] | str:
            reason = may_start()
            if reason is not None:
                return reason
            started = start(self.study, self.phases, self.user_attrs, self.heartbeat)
            self._held[started.trial._trial_id] = started.trial.number
            return started

        return self._submit(job)

    def finish(self, started: Started[Any], ran: Ran[Any]) -> Future[FrozenTrial]:
        def job() -> FrozenTrial:
            trial = finish(self.study, self.phases, started, ran, self.heartbeat)
            del self._held[started.trial._trial_id]
            self.on_finished(trial)
            return trial

        return self._submit(job)

    def release(self, started: Started[Any], why: str) -> Future[FrozenTrial]:
        def job() -> FrozenTrial:
            trial = release(self.study, started, why, self.heartbeat)
            del self._held[started.trial._trial_id]
            return trial

        return self._submit(job)

    def check(self) -> None:
        """Raise the error of the first finished job that failed (a storage failure ends the worker)."""
        done = [future for future in self._pending if future.done()]
        self._pending = [future for future in self._pending if not future.done()]
        for future in done:
            if (error := future.exception()) is not None:
                raise error

    def drain(self) -> None:
        """Wait for every job, then `check`."""
        for future in self._pending:
            future.exception()
        self.check()

    def close(self) -> None:
        if self._background is not None:
            self._background.close()
        self.heartbeat.close()

    def _submit(self, job: Callable[[], T]) -> Future[T]:
        """Run `job` after every job submitted before it: on the background thread, or now."""
        if self._background is not None:
            future = self._background.submit(job)
        else:
            future = Future()
            _settle(future, job, ())
        self._pending.append(future)
        return future
