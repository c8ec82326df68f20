"""The heartbeat of a worker's live trials: how the other workers tell them from a dead worker's.

One daemon thread per worker records a heartbeat for each trial the worker holds (the one
training and, with --prefetch, the next one already asked) every `heartbeat_interval` s, and
after each round that got through fails the study's stale trials and queues the retries a dead
checker left out (search/stale.py). So a dead worker's trial turns FAILED (and is re-queued)
within the grace period plus one interval of its last beat while any other worker is training,
not only between two trials. A failed beat is logged and retried at the next interval; it must
never end the thread while a trial still runs. The thread's storage calls are not retried
(search/retry.py): a beat must never hold up the trial.
"""

from __future__ import annotations

import logging
import threading

import optuna

from search.retry import storage_failure
from search.stale import fail_stale_trials, requeue_orphans

log = logging.getLogger("search")


class Heartbeat:
    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.storage = study._storage  # not public API, but a stable attribute
        interval = getattr(self.storage, "get_heartbeat_interval", None)  # None: no heartbeats
        self.interval = interval() if interval is not None else None
        self._live: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._started = False

    def add(self, trial_id: int) -> None:
        """Beat `trial_id` at once (a trial without any heartbeat row is never seen as stale, so a
        worker dying now still leaves a trial the others can fail), then every interval."""
        if self.interval is None:
            return
        self._beat(trial_id)
        with self._lock:
            self._live.add(trial_id)
            if not self._started and not self._stop.is_set():
                self._thread.start()
                self._started = True

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self._live.discard(trial_id)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            with self._lock:
                live = sorted(self._live)
            if live and all([self._beat(trial_id) for trial_id in live]):
                try:
                    fail_stale_trials(self.study)
                    if orphans := requeue_orphans(self.study):
                        log.info("queued the retry of trial(s) %s, failed as stale by a worker that died "
                                 "before queueing it", ", ".join(map(str, orphans)))
                except Exception as error:
                    log.warning("stale-trial check failed: %s", storage_failure(error))

    def _beat(self, trial_id: int) -> bool:
        try:
            self.storage.record_heartbeat(trial_id)
        except Exception as error:  # a database blip; the grace period covers a few missed beats
            log.warning("heartbeat of trial id %d failed: %s", trial_id, storage_failure(error))
            return False
        return True
