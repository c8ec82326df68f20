"""Bounded retries of the worker's storage calls: a database that restarts or blinks costs a
reconnect and a log line, not a trial; one that stays away past --db-patience ends the worker.

`RetryingStorage` is the study's storage. It wraps Optuna's own cached RDBStorage by composition:
each method of Optuna's storage and heartbeat interfaces is written out below and passes its call
through `Retry.call`, so every storage call of the loop — ask, suggest, the objective's attribute
writes, tell, the budget count, the stale check — is retried in one place. An abstract method that
a new Optuna release adds makes the class abstract, so the worker fails at start instead of
running that call un-retried.

- Transient: the driver lost its connection or could not open one (SQLAlchemy's OperationalError,
  InterfaceError, DisconnectionError, also when Optuna wraps them in a StorageInternalError). The
  pool pre-pings, so the next attempt gets a fresh connection. Any other error propagates at once.
- Backoff: 1, 2, 4, 8, then 16 s between attempts, each wait logged as one line; the worker gives
  up with `DatabaseUnavailable` once one call has failed for `patience` seconds (or made the
  attempts that fit in them, whichever comes first).
- Idempotent: a write retried after its connection died may have committed already. Optuna's
  attribute and parameter writes are upserts; a state change (tell, or taking a waiting trial)
  whose answer may have been lost is checked against the stored trial, and one already in the
  asked-for state counts as done. SQLite's errors are never such a case: it runs in this process,
  so "database is locked" means nothing was written, and the trial in that state is another
  worker's (counting it as ours would run one trial in two workers).
- Only the thread that opened the storage retries, and threads it hands its work to (`adopt_thread`:
  --prefetch's). The heartbeat thread's calls fail at once: it logs and tries again at its next
  beat, and must never hold up the end of a trial.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
import psycopg
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from objective.errors import first_line
from studies.liveness import DEFAULT_PATIENCE
from studies.optuna_internals import HeartbeatInterface, cached, stale_trial_ids

log = logging.getLogger("search")

FIRST_DELAY = 1.0
MAX_DELAY = 16.0
# The journal (studies/journal.py) talks to PostgreSQL through psycopg directly.
TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
             sqlalchemy.exc.DisconnectionError, psycopg.OperationalError, psycopg.InterfaceError)

T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    """The database stayed unreachable for the whole patience."""


def is_transient(error: BaseException) -> bool:
    """True when `error`, or what it wraps, is the connection failing rather than the request."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, TRANSIENT):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def answer_may_be_lost(error: BaseException) -> bool:
    """Whether the call that raised `error` may have committed all the same: a server connection
    can die between the commit and its answer; SQLite, in this process, always answers."""
    seen: BaseException | None = error
    while seen is not None:
        orig = seen.orig if isinstance(seen, sqlalchemy.exc.DBAPIError) else seen
        if isinstance(orig, sqlite3.Error):
            return False
        seen = seen.__cause__ or seen.__context__
    return True


def storage_failure(error: BaseException) -> str:
    """What the database said. Optuna wraps its errors in a StorageInternalError whose own message
    guesses at "invalid data in the commit"; the driver's first line, down the cause chain, is
    what actually happened (server gone, database dropped, ...). Without a driver error (a session
    left unusable by a connection that died mid-transaction), the first error below the wrapper."""
    seen: BaseException | None = error
    below_wrapper: BaseException | None = None
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.orig is not None:
            return first_line(seen.orig)
        if isinstance(seen, psycopg.Error):
            return first_line(seen)
        if below_wrapper is None and not isinstance(seen, optuna.exceptions.StorageInternalError):
            below_wrapper = seen
        seen = seen.__cause__
    return first_line(below_wrapper or error)


@dataclass(frozen=True)
class Retry:
    patience: float = DEFAULT_PATIENCE
    first_delay: float = FIRST_DELAY
    max_delay: float = MAX_DELAY
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def delays(self) -> list[float]:
        """The waits between attempts while the database stays away, the last one cut at the
        patience."""
        waits: list[float] = []
        while (total := sum(waits)) < self.patience:
            waits.append(min(self.first_delay * 2 ** len(waits), self.max_delay, self.patience - total))
        return waits

    @property
    def attempts(self) -> int:
        return len(self.delays()) + 1

    def call(self, what: str, function: Callable[[], T]) -> T:
        """`function()`, retried with backoff while it fails transiently, for `patience` seconds."""
        first_failure: float | None = None
        attempt = 1
        while True:
            try:
                return function()
            except Exception as error:
                if not is_transient(error):
                    raise
                now = self.clock()
                first_failure = now if first_failure is None else first_failure
                left = self.patience - (now - first_failure)
                if left <= 0 or attempt >= self.attempts:
                    raise DatabaseUnavailable(
                        f"the database stayed unreachable for {self.patience:g} s ({attempt} attempts; "
                        f"last, during {what}: {storage_failure(error)})") from None
                delay = min(self.first_delay * 2 ** (attempt - 1), self.max_delay, left)
                attempt += 1
                log.warning("database unreachable (%s: %s); retrying in %.3g s (attempt %d/%d, "
                            "giving up after --db-patience %g s)", what, storage_failure(error), delay,
                            attempt, self.attempts, self.patience)
                self.sleep(delay)


class RetryScope:
    """`retry` for the thread that made it and the threads it adopts (--prefetch's); any other
    thread's calls (the heartbeat's) fail at once. A call inside a retried call is part of that
    attempt, never retried on its own."""

    def __init__(self, retry: Retry) -> None:
        self.retry = retry
        self._retrying = {threading.get_ident()}
        self._local = threading.local()  # .depth > 0 inside a retried call

    def adopt_thread(self) -> None:
        """Retry the calls of the calling thread too."""
        self._retrying.add(threading.get_ident())

    def call(self, what: str, function: Callable[[], T]) -> T:
        depth = getattr(self._local, "depth", 0)
        if depth or threading.get_ident() not in self._retrying:
            return function()
        self._local.depth = depth + 1
        try:
            return self.retry.call(what, function)
        finally:
            self._local.depth = depth


class RetryingStorage(BaseStorage, HeartbeatInterface):
    """`backend` behind Optuna's read cache, each call retried by `retry`. Pass it where a storage
    goes (`create_study(storage=...)`); Optuna uses it as it would the RDBStorage."""

    def __init__(self, backend: RDBStorage, retry: Retry) -> None:
        self.backend = backend
        self.inner = cached(backend)
        self.scope = RetryScope(retry)

    def adopt_thread(self) -> None:
        self.scope.adopt_thread()

    def _retried(self, what: str, function: Callable[[], T]) -> T:
        return self.scope.call(what, function)

    # -- studies ---------------------------------------------------------------------------------

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self._retried("create_new_study", lambda: self.inner.create_new_study(directions, study_name))

    def delete_study(self, study_id: int) -> None:
        self._retried("delete_study", lambda: self.inner.delete_study(study_id))

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retried("set_study_user_attr", lambda: self.inner.set_study_user_attr(study_id, key, value))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._retried("set_study_system_attr", lambda: self.inner.set_study_system_attr(study_id, key, value))

    def get_study_id_from_name(self, study_name: str) -> int:
        return self._retried("get_study_id_from_name", lambda: self.inner.get_study_id_from_name(study_name))

    def get_study_name_from_id(self, study_id: int) -> str:
        return self._retried("get_study_name_from_id", lambda: self.inner.get_study_name_from_id(study_id))

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self._retried("get_study_directions", lambda: self.inner.get_study_directions(study_id))

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retried("get_study_user_attrs", lambda: self.inner.get_study_user_attrs(study_id))

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self._retried("get_study_system_attrs", lambda: self.inner.get_study_system_attrs(study_id))

    def get_all_studies(self) -> list[optuna.study.FrozenStudy]:
        return self._retried("get_all_studies", self.inner.get_all_studies)

    # -- trials ----------------------------------------------------------------------------------

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        return self._retried("create_new_trial",
                             lambda: self.inner.create_new_trial(study_id, template_trial))

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        self._retried("set_trial_param", lambda: self.inner.set_trial_param(
            trial_id, param_name, param_value_internal, distribution))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self._retried("get_trial_id", lambda: self.inner.get_trial_id_from_study_id_trial_number(
            study_id, trial_number))

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        answer_lost = False  # an earlier attempt may have committed without our hearing it

        def attempt() -> bool:
            nonlocal answer_lost
            try:
                changed = self.inner.set_trial_state_values(trial_id, state, values)
            except UpdateFinishedTrialError:
                if answer_lost and self.backend.get_trial(trial_id).state == state:
                    return True  # the attempt whose connection died had committed it
                raise
            except Exception as error:
                answer_lost = answer_lost or answer_may_be_lost(error)
                raise
            if not changed and answer_lost and state == TrialState.RUNNING:
                # Taking a waiting trial: RUNNING now most likely means the lost attempt took it.
                # Taking it again is safe either way: a trial run twice is told once.
                return self.backend.get_trial(trial_id).state == TrialState.RUNNING
            return changed

        return self._retried("set_trial_state_values", attempt)

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._retried("set_trial_intermediate_value", lambda: self.inner.set_trial_intermediate_value(
            trial_id, step, intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._retried("set_trial_user_attr", lambda: self.inner.set_trial_user_attr(trial_id, key, value))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._retried("set_trial_system_attr", lambda: self.inner.set_trial_system_attr(trial_id, key, value))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._retried("get_trial", lambda: self.inner.get_trial(trial_id))

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._retried("get_all_trials", lambda: self.inner.get_all_trials(study_id, deepcopy, states))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        # The cache's own: one query, where BaseStorage's default reads every complete trial.
        return self._retried("get_best_trial", lambda: self.inner.get_best_trial(study_id))

    def remove_session(self) -> None:
        self.backend.remove_session()

    # -- heartbeats: never retried (module docstring) --------------------------------------------

    def record_heartbeat(self, trial_id: int) -> None:
        self.inner.record_heartbeat(trial_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        return self._retried("stale trial check", lambda: stale_trial_ids(self.inner, study_id))

    def get_heartbeat_interval(self) -> int | None:
        return self.inner.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.inner.get_heartbeat_stale_trial_callback()
