"""A worker's trial loop: the whole life of a trial, and why the worker stops.

    while no stop applies (`Stops`):         `run_trials`, and for one trial `run_trial`:
        begun = begin(study, objective, ...)   ask: the trial's row is created RUNNING, or a WAITING
                                               one is taken (the baseline, a start point, a dead
                                               worker's retry); its first heartbeat; the `worker`
                                               attribute; objective.plan: suggest, `config`
        ending = train(objective, begun)       objective.train_seeds: the training, no storage
        end(study, objective, begun, ending)   objective.record: attributes and constraints; then
                                               tell: the row's state and value

How a trial ends, and where that is written:
- COMPLETE: `end` tells the value `Objective.record` returned, after its attributes.
- PRUNED: the objective raised TrialPruned (a run past the time limit); `end` tells PRUNED.
- FAILED with `fail_reason` "<Error>: <first line>": any exception from suggest, training or record
  (a bug, out of memory), or "worker interrupted (SIGTERM)" for the second signal; `end` writes it.
- FAILED with `fail_reason` "not run: <why> before its turn": a trial --prefetch asked before the
  worker stopped (search/prefetch.py); `release` writes it.
- FAILED by another worker, without a `fail_reason`: this worker's heartbeats stopped for the grace
  period (it died, or lost the database). A live worker's stale check fails the trial and queues a
  retry of its parameters (search/heartbeat.py). Should this worker come back, `end` finds the
  trial finished and drops its own result.
- Left RUNNING only when the database stays away past --db-patience: the worker exits 1, and the
  trial ends as in the case above.

Who writes a trial's row (its attributes' names: objective/attributes.py), and nothing else does:
- this module: the ask and the tell (state, value), `worker` and `fail_reason`;
- objective/optuna_objective.py, called from here: `config` (plan), the measured attributes and
  the constraints (record; the constraints through studies/optuna_internals.py's one write);
- search/heartbeat.py: the heartbeat, and through search/stale.py a dead worker's trial FAILED and
  its retry queued (Optuna's own stale-trial callback);
- studies/storage.py, once per study: the baseline's and the start points' WAITING rows.

Why this loop and not `study.optimize`, which runs the same ask and tell (Optuna 5.0):
1. A worker back from a database outage whose trial another worker has failed meanwhile must go
   on; `optimize` tells the finished trial and its ValueError ends the loop. Here tell skips it.
2. --prefetch does a trial's storage work while the one before trains (search/prefetch.py), which
   `optimize` cannot; it shares `begin`, `train` and `end` with this loop.
3. `optimize` fails stale trials before every ask (3 statements on Postgres); here the heartbeat
   thread does it once per interval, also while a long trial trains.
"""

from __future__ import annotations

import logging
import signal
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
import psycopg
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from objective import attributes
from objective.errors import first_line
from objective.optuna_objective import Objective, Planned, Trained
from objective.trainer_process import TrainingFailed
from search.clock import SYSTEM, Clock
from search.heartbeat import Heartbeat
from search.retry import DatabaseUnavailable
from search.signals import GracefulStop, WorkerInterrupted
from studies.journal import batched

log = logging.getLogger("search")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts against the study's budget
# The storage failing past its retries is not the trial's fault: it ends the worker, not the trial.
STORAGE_FAILURES = (sqlalchemy.exc.SQLAlchemyError, psycopg.Error, optuna.exceptions.StorageInternalError,
                    DatabaseUnavailable)
# A worker whose every trial fails is burning its device on a bug: stop and say so.
MAX_FAILURES_IN_A_ROW = 10
REASON_LENGTH = 500  # characters of an exception's message kept in `fail_reason`


@dataclass
class Stops:
    """Why the worker starts no further trial: its own limits, and the study's budget."""

    graceful_stop: GracefulStop
    n_trials: int | None = None  # --n-trials: trials this worker runs
    timeout: float | None = None  # --timeout: seconds of searching
    budget: int | None = None  # [study] n_trials: finished trials of every worker
    minutes: float | None = None  # [study] minutes from the study's creation ...
    deadline: float | None = None  # ... as the clock.time() past which no trial starts
    clock: Clock = SYSTEM  # a simulated fleet's is virtual (search/clock.py)
    started: float = field(init=False)
    ran: int = 0  # trials this worker has run (or runs now)
    failures_in_a_row: int = 0
    last_failure: str | None = None

    def __post_init__(self) -> None:
        self.started = self.clock.monotonic()

    def count(self, trial: FrozenTrial) -> None:
        """Count a finished trial of this worker's."""
        if trial.state == TrialState.FAIL:
            self.failures_in_a_row += 1
            self.last_failure = trial.user_attrs.get(attributes.FAIL_REASON)
        else:
            self.failures_in_a_row = 0

    def own_reason(self, ahead: float = 0.0, running: int = 0) -> str | None:
        """A reason read from nothing but this worker; `ahead` seconds from now and `running`
        more trials, for --prefetch."""
        if self.graceful_stop.requested:
            return f"{self.signal_name} received"
        if self.n_trials is not None and self.ran + running >= self.n_trials:
            return f"ran --n-trials {self.n_trials}"
        if self.timeout is not None and self.clock.monotonic() + ahead - self.started >= self.timeout:
            return f"--timeout {self.timeout:g} s passed"
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            return (f"{self.failures_in_a_row} trials in a row failed (last: {self.last_failure}); "
                    "rerun with --verbose for the tracebacks")
        return None

    def budget_reason(self, study: optuna.Study, running: int = 0) -> str | None:
        """The study's budget, counting every worker's finished trials and this worker's
        `running` one."""
        if self.deadline is not None and self.clock.time() >= self.deadline:
            return f"the study's budget is reached ({self.minutes:g} minutes since it was created)"
        if self.budget is None:
            return None
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        if finished + running < self.budget:
            return None
        also = ", and this worker's last one" if running else ""
        return f"the study's budget is reached ({finished} of {self.budget} trials finished{also})"

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.graceful_stop.signum or signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        """0, or 1 for a worker that gave up on failing trials, or 130/143 for an abort."""
        if self.graceful_stop.aborted:
            return self.graceful_stop.exit_code
        return 1 if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW else 0


def run_trials(study: optuna.Study, objective: Objective, heartbeat: Heartbeat, stops: Stops,
               attrs: Mapping[str, Any], on_told: Callable[[FrozenTrial], None]) -> str:
    """Trial after trial until a stop. Returns why it stopped."""
    while (reason := stops.own_reason() or stops.budget_reason(study)) is None:
        stops.ran += 1
        told = run_trial(study, objective, heartbeat, attrs)
        stops.count(told)
        on_told(told)
        if stops.graceful_stop.aborted:
            return f"aborted on a second {stops.signal_name}"
    return reason


def run_trial(study: optuna.Study, objective: Objective, heartbeat: Heartbeat,
              attrs: Mapping[str, Any]) -> FrozenTrial:
    """One trial, from ask to tell. Returns it as stored."""
    begun = begin(study, objective, heartbeat, attrs)
    return end(study, objective, begun, train(objective, begun), heartbeat)


@dataclass(frozen=True)
class Begun:
    """An asked trial with its plan, or why planning failed."""

    trial: optuna.Trial
    planned: Planned | None
    failure: str | None = None


@dataclass(frozen=True)
class Ending:
    """How training left a trial: trained, pruned, or failed with a reason. The exception itself
    is not kept: its frames would pin the trial's tensors."""

    trained: Trained | None = None
    pruned: bool = False
    failure: str | None = None


def begin(study: optuna.Study, objective: Objective, heartbeat: Heartbeat,
          attrs: Mapping[str, Any]) -> Begun:
    """Ask for a trial (a waiting one first: the baseline, a start point, a retry) and plan it."""
    trial = study.ask()
    heartbeat.add(trial)
    try:
        with batched(trial.storage):  # one append on a journal: the attributes and parameters
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            planned = objective.plan(trial)
        return Begun(trial, planned)
    except (*STORAGE_FAILURES, UpdateFinishedTrialError):
        raise
    except Exception as error:  # a bug in the space or the objective: this trial fails, not the worker
        return Begun(trial, None, failure=failure_reason(error, trial.number))


def train(objective: Objective, begun: Begun) -> Ending:
    """The trial's training; every exception but the storage's becomes its ending."""
    log.debug("trial %d started", begun.trial.number)  # --verbose
    if begun.planned is None:
        return Ending(failure=begun.failure)
    try:
        return Ending(trained=objective.train_seeds(begun.planned))
    except optuna.TrialPruned:
        return Ending(pruned=True)
    except WorkerInterrupted as interrupt:
        reason = str(interrupt)
    except STORAGE_FAILURES:
        raise
    except Exception as error:  # any bug or OOM fails this trial, not the worker
        reason = failure_reason(error, begun.trial.number)
    return Ending(failure=reason)


def end(study: optuna.Study, objective: Objective, begun: Begun, ending: Ending,
        heartbeat: Heartbeat) -> FrozenTrial:
    """Record how the trial ended and tell it. Returns the trial as stored."""
    trial = begun.trial
    value, state, reason = None, TrialState.FAIL, ending.failure
    if ending.pruned:
        state = TrialState.PRUNED
    elif ending.trained is not None:
        try:
            with batched(trial.storage):  # one append on a journal: the result's attributes
                value, state = objective.record(trial, ending.trained), TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except UpdateFinishedTrialError:  # another worker ended it: `tell` finds so and drops it
            reason = "ended by another worker"
        except STORAGE_FAILURES:
            raise
        except Exception as error:
            reason = failure_reason(error, trial.number)
    return tell(study, trial, value, state, reason, heartbeat)


def release(study: optuna.Study, begun: Begun, why: str, heartbeat: Heartbeat) -> FrozenTrial:
    """End a trial asked before a stop and never run: FAILED with the reason, never left RUNNING."""
    return tell(study, begun.trial, None, TrialState.FAIL, f"not run: {why} before its turn", heartbeat)


def tell(study: optuna.Study, trial: optuna.Trial, value: float | None, state: TrialState,
         fail_reason: str | None, heartbeat: Heartbeat) -> FrozenTrial:
    """Tell the study, unless another worker ended the trial meanwhile: then drop the result."""
    dropped = False
    try:
        if fail_reason is not None:
            trial.set_user_attr(attributes.FAIL_REASON, fail_reason)
        told = study.tell(trial, value, state=state, skip_if_finished=True)
    except UpdateFinishedTrialError:  # a write to a trial another worker ended
        told, dropped = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True), True
    heartbeat.discard(trial)
    if dropped or told.state != state:
        log.warning("trial %d was ended as %s by another worker while it ran here (its heartbeat went "
                    "stale); a retry is queued and this run's result is dropped", told.number,
                    told.state.name)
    return told


def failure_reason(error: BaseException, number: int) -> str:
    """`OutOfMemoryError: CUDA out of memory ...`: the type (in the training process, for a run
    that raised there) and the first line of the message."""
    log.debug("trial %d failed:\n%s", number, traceback.format_exc())
    kind = error.kind if isinstance(error, TrainingFailed) else type(error).__name__
    return f"{kind}: {first_line(str(error))}"[:REASON_LENGTH]
