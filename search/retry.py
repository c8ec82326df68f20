"""Bounded retries of the worker's storage calls: a database that restarts or blinks costs a
reconnect and a log line, not a trial; one that stays away past --db-patience ends the worker.

`RetryingStorage` is the study's storage: Optuna's own caching wrapper around an RDBStorage, with
every call that reaches the database passed through `Retry.call`. So every storage call of the loop
— the stale-trial check, ask, the objective's suggest and attribute writes, tell, the budget count,
the best-trial read — is retried in one place, and neither the loop, the objective nor Optuna's
sampler needs a try/except of its own.

- Transient: the driver lost its connection or could not open one (SQLAlchemy's OperationalError,
  InterfaceError, DisconnectionError, also when Optuna wraps them in a StorageInternalError). The
  pool pre-pings, so the next attempt gets a fresh connection. Any other error propagates at once.
- Backoff: 1, 2, 4, 8, then 16 s between attempts, each waiting logged as one line; the worker
  gives up with `DatabaseUnavailable` once one call has failed for `patience` seconds (or made
  the attempts that fit in them, whichever comes first).
- Idempotent: a write retried after its connection died may have committed already. Optuna's
  attribute and parameter writes are upserts; a state change (tell, or taking a waiting trial)
  whose answer may have been lost is checked against the stored trial, and one already in the
  asked-for state counts as done. SQLite's errors are never such a case: it runs in this process,
  so "database is locked" means nothing was written, and the trial in that state is another
  worker's (counting it as ours ran one trial in two workers).
- Only the thread that opened the storage retries, and threads it hands its work to (`adopt_thread`:
  the --prefetch pipeline's). The heartbeat thread's calls fail at once: it logs and tries again at
  its next beat, and must never hold up the end of a trial.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, _CachedStorage
from optuna.trial import TrialState

from objective.errors import first_line

log = logging.getLogger("search")

DEFAULT_PATIENCE = 120.0  # seconds one storage call may keep failing before the worker gives up
FIRST_DELAY = 1.0
MAX_DELAY = 16.0
TRANSIENT = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
             sqlalchemy.exc.DisconnectionError)

T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    """The database stayed unreachable for the whole patience; `trial` is the number of the trial
    the worker was running then, if any."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.trial: int | None = None


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
    what actually happened (server gone, database dropped, ...)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.orig is not None:
            return first_line(seen.orig)
        seen = seen.__cause__
    return first_line(error)


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


class RetryingStorage(_CachedStorage):
    """Optuna's caching RDBStorage wrapper (what `create_study(storage=RDBStorage)` builds), with
    each database call retried by `retry`. Pass it where a storage goes; Optuna uses it as is."""

    def __init__(self, backend: RDBStorage, retry: Retry) -> None:
        super().__init__(backend)
        self.retry = retry
        self._retrying = {threading.get_ident()}
        self._local = threading.local()  # .depth > 0 inside a retried call: its calls are that attempt

    def adopt_thread(self) -> None:
        """Retry the calls of the calling thread too."""
        self._retrying.add(threading.get_ident())

    def _retried(self, what: str, function: Callable[[], T]) -> T:
        depth = getattr(self._local, "depth", 0)
        if depth or threading.get_ident() not in self._retrying:
            return function()
        self._local.depth = depth + 1
        try:
            return self.retry.call(what, function)
        finally:
            self._local.depth = depth

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        answer_lost = False  # an earlier attempt may have committed without our hearing it

        def attempt() -> bool:
            nonlocal answer_lost
            try:
                changed = _CachedStorage.set_trial_state_values(self, trial_id, state, values)
            except UpdateFinishedTrialError:
                if answer_lost and self._backend.get_trial(trial_id).state == state:
                    return True  # the attempt whose connection died had committed it
                raise
            except Exception as error:
                answer_lost = answer_lost or answer_may_be_lost(error)
                raise
            if not changed and answer_lost and state == TrialState.RUNNING:
                # Taking a waiting trial: RUNNING now most likely means the lost attempt took it.
                # Taking it again is safe either way: a trial run twice is told once.
                return self._backend.get_trial(trial_id).state == TrialState.RUNNING
            return changed

        return self._retried("set_trial_state_values", attempt)


def _wrap(name: str) -> Callable[..., Any]:
    method = getattr(_CachedStorage, name)

    @functools.wraps(method)
    def retried(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retried(name, lambda: method(self, *args, **kwargs))

    return retried


# Every _CachedStorage method that reaches the database, except record_heartbeat (the heartbeat
# thread's own business) and set_trial_state_values (above, with its idempotency check).
for _name in ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
              "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "create_new_trial",
              "set_trial_param", "get_trial_id_from_study_id_trial_number", "get_best_trial",
              "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
              "get_trial", "get_all_trials", "_get_stale_trial_ids"):
    setattr(RetryingStorage, _name, _wrap(_name))
