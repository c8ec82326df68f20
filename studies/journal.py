"""PostgreSQL as an Optuna journal: the storage for fleets, `postgresql+journal://user@host/db`.

Optuna's RDBStorage makes every storage call an ORM transaction of several statements, and its
read cache reads every RUNNING trial again, whole, on each read of the study: a worker among 16
re-reads some 30 running trials several times a trial, and the fleet's service work grows with
its size (docs/performance.md measures both). Optuna's JournalStorage instead appends one log
record per call and, on each read, replays only the records it has not seen. This module keeps
that log in PostgreSQL, through Optuna's public `BaseJournalBackend` hook, and adds what
JournalStorage lacks, so the worker runs on it unchanged:

- the log: table `optuna_journal` (seq, uid, log). Appends take an advisory lock and number their
  records after the last, so every reader replays one gapless order;
- idempotent appends: each batch carries a uid, and an append retried after its commit's answer was
  lost finds its uid and writes nothing, so no call is ever applied twice;
- transient failures (a server restart, a cut connection) reconnect and retry through `retry`, the
  worker's --db-patience policy (search/retry.py); libpq keepalives and a TCP user timeout end a
  connection whose packets vanish, as for RDBStorage (studies/storage.py);
- heartbeats: table `optuna_journal_heartbeats` (trial id, last beat, the server's clock), on a
  connection of their own that never retries (a beat must not hold up a trial), and the stale check
  Optuna's `fail_stale_trials` runs, with RDBStorage's retry callback;
- `batched`: the writes of one step (a new trial's parameters and attributes) in one append.

optuna-dashboard reads it through `python -m search.dashboard` (its own CLI knows no such URL).
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import optuna
import psycopg
from optuna.storages.journal import BaseJournalBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from studies.optuna_internals import HeartbeatInterface, frozen_trial_id

T = TypeVar("T")
Retry = Callable[[str, Callable[[], T]], T]  # (what, call) -> call(), retried while transient
LOCK_KEY = 0x6F70_6A6E  # the advisory lock every append takes
TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError)
TABLES = """
CREATE TABLE IF NOT EXISTS optuna_journal (seq bigint PRIMARY KEY, uid text NOT NULL, log text NOT NULL);
CREATE INDEX IF NOT EXISTS optuna_journal_uid ON optuna_journal (uid);
CREATE TABLE IF NOT EXISTS optuna_journal_heartbeats (trial_id integer PRIMARY KEY,
                                                     beat timestamptz NOT NULL);
"""
SEEN = "SELECT 1 FROM optuna_journal WHERE uid = %s LIMIT 1"
NEXT = "SELECT coalesce(max(seq) + 1, 0) FROM optuna_journal"
APPEND = """INSERT INTO optuna_journal (seq, uid, log)
SELECT %s + n - 1, %s, log FROM unnest(%s::text[]) WITH ORDINALITY AS records(log, n)"""


def once(what: str, call: Callable[[], T]) -> T:
    """The retry policy of a reader that waits for nothing: export, the dashboard."""
    return call()


class PostgresJournal(BaseJournalBackend):
    """The log, in a PostgreSQL database given by a libpq `conninfo` (a postgresql:// URL)."""

    def __init__(self, conninfo: str, retry: Retry[Any] = once, connect_options: dict[str, Any] | None = None,
                 create: bool = True) -> None:
        self.conninfo = conninfo
        self.retry = retry
        self.options = connect_options or {}
        self._lock = threading.Lock()  # one connection for the log, one for heartbeats
        self._beat_lock = threading.Lock()
        self._connection: psycopg.Connection[Any] | None = None
        self._beat_connection: psycopg.Connection[Any] | None = None
        self._batches = threading.local()
        if create:
            self._call("create the journal's tables", self._create)

    # -- connections ------------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.conninfo, autocommit=True, **self.options)

    def _call(self, what: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        def attempt() -> T:
            with self._lock:
                try:
                    if self._connection is None or self._connection.closed:
                        self._connection = self._connect()
                    return work(self._connection)
                except TRANSIENT:
                    self._drop()
                    raise

        return self.retry(what, attempt)

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
        self._connection = None

    def close(self) -> None:
        with self._lock:
            self._drop()
        with self._beat_lock:
            if self._beat_connection is not None:
                with contextlib.suppress(psycopg.Error):
                    self._beat_connection.close()
            self._beat_connection = None

    @staticmethod
    def _create(connection: psycopg.Connection[Any]) -> None:
        with connection.transaction():  # workers starting together: one creates, the others wait
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            connection.execute(TABLES)

    def exists(self) -> bool:
        """Whether the database holds a journal (readers never create one)."""
        found = self._call("look for the journal", lambda c: c.execute(
            "SELECT to_regclass('optuna_journal') IS NOT NULL").fetchone())
        return bool(found and found[0])

    # -- Optuna's journal interface ----------------------------------------------------------------

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        if getattr(self._batches, "logs", None) is not None:
            return []  # within a batch: nothing of this thread's is out yet, nothing is applied
        rows = self._call("read the journal", lambda c: c.execute(
            "SELECT log FROM optuna_journal WHERE seq >= %s ORDER BY seq", (log_number_from,)).fetchall())
        return [json.loads(row[0]) for row in rows]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        pending = getattr(self._batches, "logs", None)
        if pending is not None:
            pending.extend(logs)
        else:
            self.append(logs, uuid.uuid4().hex)

    def append(self, logs: list[dict[str, Any]], uid: str) -> None:
        """Append `logs` as one batch named `uid`, unless a batch of that name is there already."""
        texts = [json.dumps(log) for log in logs]

        def write(connection: psycopg.Connection[Any]) -> None:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                if connection.execute(SEEN, (uid,)).fetchone():
                    return  # a retry of an append that committed: its answer was lost, not its rows
                (first,) = connection.execute(NEXT).fetchone()
                connection.execute(APPEND, (first, uid, texts))

        self._call("append to the journal", write)

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """This thread's appends inside the block go out as one when it ends. Also when it raises:
        inside a batch nothing reaches the database, so the error is the caller's, and the writes
        before it go out as they would unbatched (a pruned trial keeps its attributes)."""
        if getattr(self._batches, "logs", None) is not None:
            yield  # already inside one
            return
        self._batches.logs = []
        try:
            yield
        finally:
            logs, self._batches.logs = self._batches.logs, None
            if logs:
                self.append(logs, uuid.uuid4().hex)

    # -- heartbeats: their own connection, never retried -------------------------------------------

    def beat(self, trial_id: int) -> None:
        with self._beat_lock:
            try:
                if self._beat_connection is None or self._beat_connection.closed:
                    self._beat_connection = self._connect()
                self._beat_connection.execute(
                    "INSERT INTO optuna_journal_heartbeats (trial_id, beat) VALUES (%s, now()) "
                    "ON CONFLICT (trial_id) DO UPDATE SET beat = now()", (trial_id,))
            except TRANSIENT:
                self._beat_connection = None
                raise

    def beaten_before(self, seconds: float) -> set[int]:
        """The trials whose last heartbeat is more than `seconds` old by the server's clock."""
        rows = self._call("the stale trial check", lambda c: c.execute(
            "SELECT trial_id FROM optuna_journal_heartbeats WHERE beat < now() - make_interval(secs => %s)",
            (seconds,)).fetchall())
        return {row[0] for row in rows}


class JournalStudyStorage(JournalStorage, HeartbeatInterface):
    """Optuna's JournalStorage on `PostgresJournal`, with heartbeats (module docstring)."""

    def __init__(self, journal: PostgresJournal, heartbeat_interval: int | None = None,
                 grace_period: int | None = None,
                 stale_trial_callback: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                 adopt_thread: Callable[[], None] = lambda: None) -> None:
        super().__init__(journal)
        self.journal = journal
        self.adopt_thread = adopt_thread  # let a thread's calls be retried too (--prefetch's)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.stale_trial_callback = stale_trial_callback

    def batched(self) -> contextlib.AbstractContextManager[None]:
        return self.journal.batched()

    def record_heartbeat(self, trial_id: int) -> None:
        self.journal.beat(trial_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """RUNNING trials beaten at least once and not for the grace period (as RDBStorage: a trial
        that never beat is never stale)."""
        if self.grace_period is None:
            return []
        running = {frozen_trial_id(t) for t in self.get_all_trials(study_id, deepcopy=False,
                                                                   states=(TrialState.RUNNING,))}
        return sorted(running & self.journal.beaten_before(self.grace_period)) if running else []

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self.stale_trial_callback


def batched(storage: object) -> contextlib.AbstractContextManager[None]:
    """One append for the block's writes on a journal storage; nothing special on any other."""
    return storage.batched() if isinstance(storage, JournalStudyStorage) else contextlib.nullcontext()
