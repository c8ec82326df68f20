"""One trial, ask-and-tell, in three phases: the worker, not Optuna's optimize loop, owns its lifetime.

- `start`: fail the study's stale trials (heartbeats of dead workers), ask, start the trial's
  heartbeat, write the worker's attributes and let the objective `prepare` (suggest a config).
- `run`: the objective's `run`, the training. It touches no storage, so it can run on the main
  thread while another thread does the storage work of the trials around it (search/pipeline.py).
- `finish`: the objective's `record` (attributes, constraint, value), then tell.

Owning the trial is what lets every way it can end be written to the study: a value, a prune, an
exception (FAILED, with the reason as the user attr `fail_reason`), the worker's abort signal, or a
prefetched trial the worker stopped before running (`release`: FAILED, "not run"). Nothing the
objective raises leaves a trial RUNNING.

A trial can also be ended by another worker: when this worker's heartbeats could not reach the
database for longer than the grace period (an outage), another worker's stale check fails the
trial and queues a retry. This worker then drops its result with a warning and goes on.
"""

from __future__ import annotations

import gc
import logging
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import optuna
import sqlalchemy
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from search.heartbeat import Heartbeat
from search.retry import DatabaseUnavailable
from search.signals import WorkerInterrupted
from search.stale import fail_stale_trials

log = logging.getLogger("search")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts against the study's budget
# The storage itself failing (past the retries of search.retry) is not the trial's fault: it ends the
# worker, not just the trial. The trial then stays RUNNING only until another worker's stale check
# fails it and enqueues a retry.
STORAGE_FAILURES = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
                    DatabaseUnavailable)
REASON_LENGTH = 500  # characters of an exception's message kept in `fail_reason`

Prepared = TypeVar("Prepared")
Result = TypeVar("Result")


class Phases(Protocol[Prepared, Result]):
    """An objective cut where the storage work ends and the training begins."""

    def prepare(self, trial: optuna.Trial) -> Prepared:
        """Storage: suggest the parameters and write what is known before training."""
        ...

    def run(self, prepared: Prepared) -> Result:
        """No storage: train. May raise; the trial then fails (or is pruned) with the reason."""
        ...

    def record(self, trial: optuna.Trial, result: Result) -> float:
        """Storage: write the outcome's attributes; return the value or raise optuna.TrialPruned."""
        ...


@dataclass
class Started(Generic[Prepared]):
    trial: optuna.Trial
    prepared: Prepared | None = None
    failure: str | None = None  # `prepare` raised: the trial is told FAILED without running


@dataclass
class Ran(Generic[Result]):
    """How `run` ended. The exception itself is not kept: its frames would pin the trial's tensors."""
    result: Result | None = None
    failure: str | None = None
    pruned: bool = False


def start(study: optuna.Study, phases: Phases[Prepared, Any], user_attrs: Mapping[str, Any],
          heartbeat: Heartbeat) -> Started[Prepared]:
    """Ask for a trial (the enqueued baseline or a re-queued one first, if one waits) and prepare it."""
    fail_stale_trials(study)
    trial = study.ask()
    heartbeat.add(trial._trial_id)  # Optuna exposes no trial's id publicly; it is a stable attribute
    try:
        for key, value in user_attrs.items():
            trial.set_user_attr(key, value)
        return Started(trial, prepared=phases.prepare(trial))
    except DatabaseUnavailable as error:
        error.trial = trial.number
        raise
    except (*STORAGE_FAILURES, UpdateFinishedTrialError):
        raise
    except Exception as error:  # a bug in the space or the objective: this trial fails, not the worker
        return Started(trial, failure=_reason(error, trial.number))


def run(phases: Phases[Prepared, Result], started: Started[Prepared]) -> Ran[Result]:
    """The trial's training; every exception but the storage's becomes the trial's outcome."""
    if started.failure is not None:
        return Ran(failure=started.failure)
    try:
        return Ran(result=phases.run(started.prepared))  # type: ignore[arg-type]
    except optuna.TrialPruned:
        return Ran(pruned=True)
    except WorkerInterrupted as interrupt:
        reason = str(interrupt)
    except (*STORAGE_FAILURES, UpdateFinishedTrialError):
        raise
    except Exception as error:  # any bug or OOM fails this trial, not the worker
        reason = _reason(error, started.trial.number)
    _free_memory()  # after the except block: the exception no longer pins the trial's tensors
    return Ran(failure=reason)


def finish(study: optuna.Study, phases: Phases[Any, Result], started: Started[Any], ran: Ran[Result],
           heartbeat: Heartbeat) -> FrozenTrial:
    """Record how the trial ended and tell the study. Returns the finished trial as stored."""
    return _end(study, started.trial, lambda: _ending(phases, started.trial, ran), heartbeat)


def release(study: optuna.Study, started: Started[Any], why: str, heartbeat: Heartbeat) -> FrozenTrial:
    """End a prefetched trial the worker will not run: FAILED with the reason, never left RUNNING."""
    ending = (None, TrialState.FAIL, f"not run: {why} before its turn")
    return _end(study, started.trial, lambda: ending, heartbeat)


Ending = tuple[float | None, TrialState, str | None]  # value, state, fail_reason


def _ending(phases: Phases[Any, Result], trial: optuna.Trial, ran: Ran[Result]) -> Ending:
    if ran.pruned:
        return None, TrialState.PRUNED, None
    if ran.failure is not None:
        return None, TrialState.FAIL, ran.failure
    try:
        return phases.record(trial, ran.result), TrialState.COMPLETE, None  # type: ignore[arg-type]
    except optuna.TrialPruned:
        return None, TrialState.PRUNED, None
    except (*STORAGE_FAILURES, UpdateFinishedTrialError):
        raise
    except Exception as error:
        return None, TrialState.FAIL, _reason(error, trial.number)


def _end(study: optuna.Study, trial: optuna.Trial, ending: Callable[[], Ending],
         heartbeat: Heartbeat) -> FrozenTrial:
    """Write `ending()` (the objective's record, then the fail reason) and tell the study, unless
    another worker ended the trial meanwhile."""
    try:
        value, state, fail_reason = ending()
        if fail_reason is not None:
            trial.set_user_attr("fail_reason", fail_reason)
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            raise UpdateFinishedTrialError(f"trial {trial.number} is already finished")
        return study.tell(trial, value, state=state, skip_if_finished=True)
    except DatabaseUnavailable as error:
        error.trial = trial.number
        raise
    except UpdateFinishedTrialError:  # a write to the finished trial raises it, so does the check
        stored = study._storage.get_trial(trial._trial_id)
        log.warning("trial %d was ended as %s by another worker while it ran here (its heartbeat "
                    "went stale); a retry is queued and this run's result is dropped",
                    trial.number, stored.state.name)
        return stored
    finally:
        heartbeat.discard(trial._trial_id)


def run_trial(study: optuna.Study, phases: Phases[Any, Any], user_attrs: Mapping[str, Any]) -> FrozenTrial:
    """start, run and finish one trial on this thread."""
    with Heartbeat(study) as heartbeat:
        started = start(study, phases, user_attrs, heartbeat)
        return finish(study, phases, started, run(phases, started), heartbeat)


def finished_count(study: optuna.Study) -> int:
    """COMPLETE + PRUNED trials of the whole study, every worker's, read from the storage."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _reason(error: BaseException, number: int) -> str:
    log.debug("trial %d failed:\n%s", number, traceback.format_exc())
    text = str(error).strip()
    first_line = text.splitlines()[0] if text else "(no message)"
    return f"{type(error).__name__}: {first_line}"[:REASON_LENGTH]


def _free_memory() -> None:
    """Give back what a failed trial allocated (above all after an out-of-memory error), so the
    next trial starts from the same memory state as every other."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
