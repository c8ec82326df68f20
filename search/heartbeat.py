"""The heartbeat of a worker's live trials: how the other workers tell them from a dead worker's.

One daemon thread per worker records a heartbeat for each trial the worker holds (the one
training and, with --prefetch, the next one already asked) every heartbeat interval, and after
each round that got through fails the study's stale trials and queues the retries a dead checker
left out (search/stale.py). So a dead worker's trial turns FAILED (and is re-queued) within the
grace period plus one interval of its last beat while any other worker is training, not only
between two trials. A failed beat is logged and retried at the next interval; it must never end
the thread while a trial still runs. The thread's storage calls are not retried (search/retry.py):
a beat must never hold up the trial.
"""

from __future__ import annotations

import logging
import threading

import optuna
from optuna.storages import BaseStorage

from search.retry import storage_failure
from search.stale import fail_stale_trials, requeue_orphans
from studies.optuna_internals import has_heartbeats, trial_id

log = logging.getLogger("search")


class Heartbeat:
    def __init__(self, study: optuna.Study, storage: BaseStorage, grace_period: float) -> None:
        self.study = study
        self.storage = storage
        self.grace_period = grace_period
        # None: heartbeats are off (a storage without them, or a simulated fleet's virtual time)
        self.interval = storage.get_heartbeat_interval() if has_heartbeats(storage) else None  # type: ignore[attr-defined]
        self._live: dict[int, int] = {}  # trial id -> number
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._started = False

    def add(self, trial: optuna.Trial) -> None:
        """Beat `trial` at once (a trial without any heartbeat row is never seen as stale, so a
        worker dying now still leaves a trial the others can fail), then every interval."""
        if self.interval is None:
            return
        self._beat(trial_id(trial))
        with self._lock:
            self._live[trial_id(trial)] = trial.number
            if not self._started and not self._stop.is_set():
                self._thread.start()
                self._started = True

    def discard(self, trial: optuna.Trial) -> None:
        with self._lock:
            self._live.pop(trial_id(trial), None)

    def held(self) -> list[int]:
        """Numbers of the trials this worker holds (asked, not told yet)."""
        with self._lock:
            return sorted(self._live.values())

    def check_stale(self) -> None:
        """Fail the study's stale trials and queue the retries a dead checker left out."""
        if self.interval is None:
            return
        fail_stale_trials(self.study)
        if orphans := requeue_orphans(self.study, self.storage, self.grace_period):
            log.info("queued the retry of trial(s) %s, failed as stale by a worker that died before "
                     "queueing it", ", ".join(map(str, orphans)))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            with self._lock:
                live = sorted(self._live)
            if live and all([self._beat(trial) for trial in live]):
                try:
                    self.check_stale()
                except Exception as error:
                    log.warning("stale-trial check failed: %s", storage_failure(error))

    def _beat(self, trial: int) -> bool:
        try:
            self.storage.record_heartbeat(trial)
        except Exception as error:  # a database blip; the grace period covers a few missed beats
            log.warning("heartbeat of trial id %d failed: %s", trial, storage_failure(error))
            return False
        return True
