"""One trial, ask-and-tell: the worker, not Optuna's optimize loop, owns the trial's lifetime.

Owning it is what lets every way a trial can end be written to the study: a value, a prune, an
exception (FAILED, with the reason as the user attr `fail_reason`) or the worker's abort signal.
Nothing the objective raises leaves a trial RUNNING. What `study.optimize` would do around the
trial is done here too: fail the study's stale trials first (heartbeats of dead workers) and keep
this trial's heartbeat going while it runs.
"""

from __future__ import annotations

import gc
import logging
import threading
import traceback
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import optuna
import sqlalchemy
import torch
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from search.signals import WorkerInterrupted

log = logging.getLogger("search")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts against the study's budget
# The storage itself failing is not the trial's fault: it ends the worker, not just the trial. The
# trial then stays RUNNING only until another worker's stale check fails it and enqueues a retry.
STORAGE_FAILURES = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
REASON_LENGTH = 500  # characters of an exception's message kept in `fail_reason`


@runtime_checkable
class HeartbeatStorage(Protocol):
    """What a storage with heartbeats offers: RDBStorage, and the cache Optuna wraps it in for a
    study (Optuna's own BaseHeartbeat class is not public API)."""

    def get_heartbeat_interval(self) -> int | None: ...

    def record_heartbeat(self, trial_id: int) -> None: ...


class Heartbeat:
    """Records the trial's heartbeat every `heartbeat_interval` s from a daemon thread, so the
    other workers can tell this trial from one whose worker died. A failed beat is logged and
    retried at the next interval; it must never end the thread while the trial still runs."""

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        self.storage = storage if isinstance(storage, HeartbeatStorage) else None
        self.interval = self.storage.get_heartbeat_interval() if self.storage is not None else None
        self.trial_id = trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.interval is not None:
            self._beat()  # at once: a trial without any heartbeat row is never seen as stale
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            self._beat()

    def _beat(self) -> None:
        try:
            assert self.storage is not None
            self.storage.record_heartbeat(self.trial_id)
        except Exception as error:  # a database blip; the grace period covers a few missed beats
            log.warning("heartbeat of trial id %d failed: %s", self.trial_id, storage_failure(error))


def fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials of dead workers FAILED; the storage's callback re-enqueues them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def finished_count(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials of the whole study, every worker's, read from the storage."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_trial(study: optuna.Study, objective: Callable[[optuna.Trial], float],
              user_attrs: Mapping[str, Any]) -> FrozenTrial:
    """Ask for a trial (the enqueued baseline first, if it still waits), run `objective` on it
    and tell the study how it ended. Returns the finished trial as stored."""
    fail_stale_trials(study)
    trial = study.ask()
    # Optuna exposes neither a study's storage nor a trial's id publicly; both are stable attributes.
    with Heartbeat(study._storage, trial._trial_id):
        log.debug("trial %d started", trial.number)
        for key, value in user_attrs.items():
            trial.set_user_attr(key, value)
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            return study.tell(trial, state=TrialState.PRUNED)
        except WorkerInterrupted as interrupt:
            reason = str(interrupt)
        except STORAGE_FAILURES:
            raise
        except Exception as error:  # any bug or OOM fails this trial, not the worker
            reason = f"{type(error).__name__}: {_first_line(error)}"[:REASON_LENGTH]
            log.debug("trial %d failed:\n%s", trial.number, traceback.format_exc())
        else:
            return study.tell(trial, value)
        _free_memory()  # after the except block: the exception no longer pins the trial's tensors
        trial.set_user_attr("fail_reason", reason)
        return study.tell(trial, state=TrialState.FAIL)


def _free_memory() -> None:
    """Give back what a failed trial allocated (above all after an out-of-memory error), so the
    next trial starts from the same memory state as every other."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def storage_failure(error: BaseException) -> str:
    """What the database said. Optuna wraps its errors in a StorageInternalError whose own message
    guesses at "invalid data in the commit"; the driver's first line, down the cause chain, is
    what actually happened (server gone, database dropped, ...)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.orig is not None:
            return _first_line(cause.orig)
        cause = cause.__cause__
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"
