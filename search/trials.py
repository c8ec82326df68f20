"""One trial, ask-and-tell: the worker, not Optuna's optimize loop, owns the trial's lifetime.

Owning it is what lets every way a trial can end be written to the study: a value, a prune, an
exception (FAILED, with the reason as the user attr `fail_reason`) or the worker's abort signal.
Nothing the objective raises leaves a trial RUNNING. What `study.optimize` would do around the
trial is done here too: fail the study's stale trials first (heartbeats of dead workers) and keep
this trial's heartbeat going while it runs. The heartbeat thread also runs the stale check at each
beat, so a dead worker's trial turns FAILED (and is re-queued) within the grace period plus one
interval of its last beat while any other worker is training, not only between two trials.

A trial can also be ended by another worker: when this worker's heartbeats could not reach the
database for longer than the grace period (an outage), another worker's stale check fails the
trial and queues a retry. This worker then drops its result with a warning and goes on.
"""

from __future__ import annotations

import gc
import logging
import threading
import traceback
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import optuna
import sqlalchemy
import torch
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from search.retry import DatabaseUnavailable, storage_failure
from search.signals import WorkerInterrupted

log = logging.getLogger("search")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts against the study's budget
# The storage itself failing (past the retries of search.retry) is not the trial's fault: it ends the
# worker, not just the trial. The trial then stays RUNNING only until another worker's stale check
# fails it and enqueues a retry.
STORAGE_FAILURES = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
                    DatabaseUnavailable)
REASON_LENGTH = 500  # characters of an exception's message kept in `fail_reason`


class Heartbeat:
    """Records the trial's heartbeat every `heartbeat_interval` s from a daemon thread, so the
    other workers can tell this trial from one whose worker died, and after each beat that got
    through fails the study's stale trials. A failed beat is logged and retried at the next
    interval; it must never end the thread while the trial still runs."""

    def __init__(self, study: optuna.Study, trial_id: int) -> None:
        self.study = study
        self.storage = study._storage  # not public API, but a stable attribute
        interval = getattr(self.storage, "get_heartbeat_interval", None)  # None: no heartbeats
        self.interval = interval() if interval is not None else None
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
            if self._beat():
                try:
                    optuna.storages.fail_stale_trials(self.study)
                except Exception as error:
                    log.warning("stale-trial check failed: %s", storage_failure(error))

    def _beat(self) -> bool:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception as error:  # a database blip; the grace period covers a few missed beats
            log.warning("heartbeat of trial id %d failed: %s", self.trial_id, storage_failure(error))
            return False
        return True


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
    """Ask for a trial (the enqueued baseline or a re-queued one first, if one waits), run
    `objective` on it and tell the study how it ended. Returns the finished trial as stored."""
    fail_stale_trials(study)
    trial = study.ask()
    # Optuna exposes no trial's id publicly; it is a stable attribute.
    with Heartbeat(study, trial._trial_id):
        log.debug("trial %d started", trial.number)
        try:
            return _run(study, trial, objective, user_attrs)
        except DatabaseUnavailable as error:
            error.trial = trial.number
            raise
        except UpdateFinishedTrialError:
            stored = study._storage.get_trial(trial._trial_id)
            log.warning("trial %d was ended as %s by another worker while it ran here (its heartbeat "
                        "went stale); a retry is queued and this run's result is dropped",
                        trial.number, stored.state.name)
            return stored


def _run(study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], float],
         user_attrs: Mapping[str, Any]) -> FrozenTrial:
    for key, value in user_attrs.items():
        trial.set_user_attr(key, value)
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return _tell(study, trial, state=TrialState.PRUNED)
    except WorkerInterrupted as interrupt:
        reason = str(interrupt)
    except (*STORAGE_FAILURES, UpdateFinishedTrialError):
        raise
    except Exception as error:  # any bug or OOM fails this trial, not the worker
        reason = f"{type(error).__name__}: {_first_line(error)}"[:REASON_LENGTH]
        log.debug("trial %d failed:\n%s", trial.number, traceback.format_exc())
    else:
        return _tell(study, trial, value)
    _free_memory()  # after the except block: the exception no longer pins the trial's tensors
    trial.set_user_attr("fail_reason", reason)
    return _tell(study, trial, state=TrialState.FAIL)


def _tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None,
          state: TrialState | None = None) -> FrozenTrial:
    """study.tell, unless another worker ended the trial meanwhile: then UpdateFinishedTrialError,
    as a write to the finished trial raises (Optuna's tell would say ValueError, or skip)."""
    if study._storage.get_trial(trial._trial_id).state.is_finished():
        raise UpdateFinishedTrialError(f"trial {trial.number} is already finished")
    return study.tell(trial, value, state=state, skip_if_finished=True)


def _free_memory() -> None:
    """Give back what a failed trial allocated (above all after an out-of-memory error), so the
    next trial starts from the same memory state as every other."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"
