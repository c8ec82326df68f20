"""Storage URL -> RDBStorage tuned for many workers, spec -> Optuna study (race-safe), and an
existing study opened for reading (export, report) without creating anything.

- SQLite (the embedded default, `sqlite:///optuna.db` in the working directory): WAL journal so
  readers (the dashboard) never block the writer, and a long busy timeout so concurrent workers
  queue for the write lock instead of failing with "database is locked". Each transaction starts
  with BEGIN IMMEDIATE: Python's sqlite3 otherwise begins one only at the first write, so Optuna's
  "read the trial, then write it" (taking a waiting trial) was two steps, and two workers both
  read WAITING and both ran the trial. Holding the write lock from the read on makes it one step.
- Postgres/MySQL: pre-ping on checkout (a restarted server costs a reconnect, not a trial) and a
  connect timeout, so an unreachable host is an answer within seconds, not a hang; on Postgres,
  TCP keepalives and a TCP user timeout end a connection cut off mid-call within seconds too.
- Through a transaction pooler (PgBouncer's pool_mode = transaction): `?prepare_threshold=none` on
  a postgresql+psycopg or postgresql+journal URL turns off psycopg's prepared statements, which
  such a pooler breaks (docs/cluster.md, "The connection budget").
- Heartbeats: a worker that dies mid-trial leaves a trial that turns FAILED after the grace period
  and is re-enqueued by RetryHeartbeatStaleTrialCallback (at most MAX_RETRY times). The worker's
  --heartbeat-interval and --grace-period change the defaults below; give every worker of a study
  the same grace period (the one that checks judges by its own).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import psycopg
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna_dashboard import save_note
from sqlalchemy.engine import URL, make_url

from objective import attributes
from objective.errors import UserError, first_line
from objective.optuna_objective import METRIC_NAME
from studies.journal import JournalStudyStorage, PostgresJournal, Retry, once
from studies.liveness import GRACE_PERIOD, HEARTBEAT_INTERVAL
from studies.spec import StudySpec

DEFAULT_STORAGE = "sqlite:///optuna.db"
JOURNAL = "postgresql+journal"  # Optuna's JournalStorage, its log in PostgreSQL (studies/journal.py)
MAX_RETRY = 2  # re-runs of a trial whose worker died; a failing config is not retried forever
CONNECT_TIMEOUT = 10  # seconds to reach a database server
READY_PATIENCE = 30  # seconds a joining worker waits for the study's creator to finish writing it
# PyMySQL's connect_timeout covers only the TCP connect; without a read timeout a host that accepts
# but never answers hangs the handshake forever. Longer than InnoDB's default 50 s lock wait, so a
# query that waits on a lock gets the server's own answer first.
MYSQL_READ_TIMEOUT = 60
SQLITE_BUSY_TIMEOUT = 120  # seconds a SQLite writer waits for the lock
# A connection whose packets vanish (the network cut, not refused) raises nothing: libpq waits
# while TCP retransmits (~15 min), so --db-patience never starts. The kernel drops it instead: data
# unacknowledged for 10 s (tcp_user_timeout, ms), or a server silent to probes from 5 s on, every
# 2 s. A live server's kernel acks and answers probes even during a slow query.
# tests/search/test_worker_partition.py cuts one.
LIBPQ_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                    "tcp_user_timeout": CONNECT_TIMEOUT * 1000}
# psycopg prepares a statement on the server from its 5th execution on a connection. A transaction
# pooler runs each transaction on whichever server connection is free, where that statement does not
# exist (PgBouncer 1.21+ can track them, `max_prepared_statements`; Debian 12 ships 1.18). psycopg's
# own option, `prepare_threshold`, in the URL's query says so: `none` never prepares. libpq knows no
# such parameter and SQLAlchemy would hand psycopg the text, so it is read here and passed typed.
PREPARE_THRESHOLD = "prepare_threshold"


class StorageError(UserError):
    """The storage URL cannot be used; the message is one line, with the password masked."""


def resolve_url(cli_value: str | None) -> str:
    """--storage, else $OPTUNA_STORAGE, else the embedded SQLite default."""
    return cli_value or os.environ.get("OPTUNA_STORAGE") or DEFAULT_STORAGE


def mask(url: str) -> str:
    """The URL with its password replaced by ***, for every log line and error message."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL still must not leak what looks like a secret
        return url.split("@")[-1] if "@" in url else url


def secrets_of(url: str) -> list[str]:
    """The password in `url`, as written there and decoded, for hiding it in any text."""
    try:
        password = make_url(url).password
    except Exception:  # not a URL: nothing to hide beyond what mask() does
        return []
    return sorted({str(password), quote(str(password), safe="")}) if password else []


def parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"storage URL {mask(url)!r} is not a database URL "
            "(expected e.g. sqlite:///optuna.db or postgresql+psycopg://user@host/db)"
        ) from None
    if parsed.drivername != JOURNAL:
        try:
            parsed.get_dialect()
        except sqlalchemy.exc.NoSuchModuleError:
            raise StorageError(f"storage URL {mask(url)!r} names an unknown database {parsed.drivername!r}; "
                               f"use sqlite, postgresql+psycopg, {JOURNAL} or mysql+pymysql") from None
    psycopg_options(parsed)  # a bad prepare_threshold is bad input, said before anything starts
    return parsed


def psycopg_options(url: URL) -> dict[str, Any]:
    """psycopg's connection options from the URL's query that libpq does not take:
    `prepare_threshold` (`none`, or a whole number >= 0), typed as psycopg.connect wants it."""
    if url.get_driver_name() not in ("psycopg", "journal") or PREPARE_THRESHOLD not in url.query:
        return {}
    text = url.query[PREPARE_THRESHOLD]
    text = text[-1] if isinstance(text, tuple) else text  # given twice: the last one, as libpq does
    if text.lower() == "none":
        return {PREPARE_THRESHOLD: None}
    if not text.isdigit():
        raise StorageError(f"storage URL {url.render_as_string(hide_password=True)!r}: "
                           f"{PREPARE_THRESHOLD} must be none (through a transaction pooler such as "
                           f"PgBouncer) or a whole number, not {text!r}")
    return {PREPARE_THRESHOLD: int(text)}


def engine_kwargs(url: URL) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        # isolation_level=None: the driver emits no BEGIN of its own; _begin_immediate does.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT, "isolation_level": None}}
    # A worker's threads that call the storage: the main loop, --prefetch's and the heartbeat's.
    # With prefetch the main thread only trains while the other two call, and Optuna's schema check
    # at start holds 2, so a worker holds 2 connections (measured: docs/cluster.md). The overflow of
    # 1 is for a third thread, should all three ever call at once, and closes once returned: a
    # worker opens 3 at most, the figure a fleet's connection budget plans with.
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 1}
    kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    if url.get_backend_name() == "postgresql":
        # connect_args win over the URL's query, which SQLAlchemy passes to psycopg as text
        kwargs["connect_args"].update(LIBPQ_KEEPALIVES, **psycopg_options(url))
    if url.get_backend_name() == "mysql":
        kwargs["pool_recycle"] = 3600  # MySQL closes idle connections after wait_timeout
        kwargs["connect_args"].update(read_timeout=MYSQL_READ_TIMEOUT, write_timeout=MYSQL_READ_TIMEOUT)
    return kwargs


def _enable_wal(url: URL) -> None:
    # The WAL journal mode is a property of the database file, so setting it once is enough.
    if url.database and url.database != ":memory:":
        with sqlite3.connect(url.database, timeout=SQLITE_BUSY_TIMEOUT) as connection:
            connection.execute("PRAGMA journal_mode=WAL")


def _begin_immediate(connection: sqlalchemy.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _sync_at_checkpoints(dbapi_connection: sqlite3.Connection, _: object) -> None:
    # In WAL mode, synchronous=NORMAL flushes to disk at checkpoints, not at every commit: a
    # killed worker loses nothing (the WAL is in the OS's cache), and a power cut can lose only
    # the last commits, never corrupt the file. A trial makes some 40 commits.
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def open_journal(url: str, heartbeat: bool = True, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD, retry: Retry[Any] = once,
                 adopt_thread: Callable[[], None] = lambda: None, create: bool = True) -> JournalStudyStorage:
    """The journal storage at a `postgresql+journal://` URL (studies/journal.py); `retry` retries its
    calls while the server is away (the worker's --db-patience)."""
    parsed = parse_url(url)
    conninfo = (parsed.set(drivername="postgresql").difference_update_query([PREPARE_THRESHOLD])
                .render_as_string(hide_password=False))
    options = {"connect_timeout": CONNECT_TIMEOUT, **LIBPQ_KEEPALIVES, **psycopg_options(parsed)}
    try:
        journal = PostgresJournal(conninfo, retry, options, create=create)
        if not create and not journal.exists():
            raise StorageError(f"{mask(url)} holds no Optuna journal (no optuna_journal table); "
                               "check --storage or $OPTUNA_STORAGE")
    except psycopg.OperationalError as error:
        raise StorageError(f"cannot connect to {mask(url)}: {first_line(error)}") from None
    callback = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY) if heartbeat else None
    return JournalStudyStorage(journal, heartbeat_interval if heartbeat else None,
                               grace_period if heartbeat else None, callback, adopt_thread)


def open_storage(url: str, heartbeat: bool = True, attempts: int = 3,
                 heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD) -> RDBStorage:
    """An RDBStorage for `url`. Concurrent first starts race to create the schema, so a failed
    attempt is retried with a short backoff before giving up with one clear line."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        try:
            _enable_wal(parsed)
        except sqlite3.Error as error:
            raise StorageError(f"cannot open SQLite database {parsed.database!r}: {error}") from None
    heartbeat_kwargs: dict[str, Any] = {}
    if heartbeat:
        heartbeat_kwargs = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        }
    for attempt in range(1, attempts + 1):
        try:
            storage = RDBStorage(url, engine_kwargs=engine_kwargs(parsed), **heartbeat_kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts:
                raise StorageError(f"could not create the Optuna schema in {mask(url)}") from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as error:
            if attempt == attempts or _timed_out(error):
                raise StorageError(f"cannot connect to {mask(url)}: {_first_line(error)}") from None
        else:
            if parsed.get_backend_name() == "sqlite":
                sqlalchemy.event.listen(storage.engine, "begin", _begin_immediate)
                sqlalchemy.event.listen(storage.engine, "connect", _sync_at_checkpoints)
                storage.engine.dispose()  # the connections opened so far, without the pragma
            return storage
        time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def _timed_out(error: sqlalchemy.exc.DBAPIError) -> bool:
    """A host that did not answer within CONNECT_TIMEOUT: retrying would only triple the wait."""
    text = _first_line(error).lower()
    return "timeout" in text or "timed out" in text


def _first_line(error: sqlalchemy.exc.DBAPIError) -> str:
    return first_line(error.orig if error.orig is not None else error)


def create_or_load(spec: StudySpec, storage: BaseStorage, sampler_seed: int | None,
                   study_name: str | None = None, note: str | None = None,
                   now: float | None = None) -> tuple[optuna.Study, bool]:
    """The spec's study on `storage`, created if missing. Returns (study, created).

    Exactly one of many workers starting at the same second creates the study (the database's
    unique name decides), names its objective, writes `note` for the dashboard and enqueues the
    seed-recipe baseline and the spec's start points, so each exists once. `now`: the creation time
    (time.time(), or a simulated fleet's virtual clock), from which [study] minutes count."""
    name = study_name or spec.name
    sampler = spec.make_sampler(sampler_seed)
    try:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                    direction=spec.direction)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler)
        wait_until_ready(study)
        return study, False
    study.set_metric_names([METRIC_NAME])
    study.set_user_attr(attributes.STUDY_SPEC, spec.source)
    study.set_user_attr(attributes.STUDY_BASE_CONFIG, spec.base.to_dict())
    study.set_user_attr(attributes.STUDY_ACCURACY_TARGET, spec.objective.accuracy_target)
    study.set_user_attr(attributes.STUDY_OBJECTIVE, asdict(spec.objective))
    if note is not None:
        save_note(study, note)
    baseline, *starts = spec.start_params()
    study.enqueue_trial(baseline, user_attrs={attributes.BASELINE: True})
    for index, params in enumerate(starts, 1):
        study.enqueue_trial(params, user_attrs={attributes.START_POINT: index})
    # Written last: it says the study is whole. [study] minutes count from here.
    study.set_user_attr(attributes.STUDY_CREATED_AT, time.time() if now is None else now)
    return study, True


def wait_until_ready(study: optuna.Study, patience: float = READY_PATIENCE) -> None:
    """Wait for a study another worker is creating to be whole (its `created_at` written last):
    a worker joining in between would see no budget, no recipe to check and no baseline."""
    deadline = time.monotonic() + patience
    while attributes.STUDY_CREATED_AT not in study.user_attrs:
        if time.monotonic() > deadline:
            raise StorageError(f"study {study.study_name!r} is not whole after {patience:g} s (no "
                               "created_at): its creator died while creating it, or made it without "
                               "search.worker; pass --study NEW_NAME")
        time.sleep(0.05)


def load_existing(url: str, study_name: str) -> optuna.Study:
    """A study that must already exist (export, report), opened without creating anything: a
    missing SQLite file, a database without Optuna's tables or a missing study is an error (the
    latter naming the studies that do exist), never a new empty database, schema or study."""
    parsed = parse_url(url)
    if parsed.drivername == JOURNAL:
        return _load(open_journal(url, heartbeat=False, create=False), url, study_name)
    if parsed.get_backend_name() == "sqlite":  # sqlite would create a missing file on connect
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise StorageError(f"storage {mask(url)!r} is not a SQLite database file")
        if not Path(database).is_file():
            raise StorageError(f"no SQLite database at {database} (from {mask(url)!r})")
    _require_optuna_schema(url, parsed)
    try:
        storage = open_storage(url, heartbeat=False)
    except RuntimeError as error:  # e.g. Optuna's schema-version check
        raise StorageError(f"cannot read {mask(url)}: {first_line(error)}") from None
    return _load(storage, url, study_name)


def _load(storage: BaseStorage, url: str, study_name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise StorageError(f"no study {study_name!r} in {mask(url)}; studies there: {names}") from None


def _require_optuna_schema(url: str, parsed: URL) -> None:
    """Opening an RDBStorage creates Optuna's tables where they are missing: a write, and in the
    wrong database a mess. So look first, with a throwaway engine, and refuse a database without them."""
    engine = sqlalchemy.create_engine(parsed, **engine_kwargs(parsed))
    try:
        with engine.connect() as connection:
            present = sqlalchemy.inspect(connection).has_table("studies")
    except sqlalchemy.exc.DBAPIError as error:
        raise StorageError(f"cannot connect to {mask(url)}: {_first_line(error)}") from None
    finally:
        engine.dispose()
    if not present:
        raise StorageError(f"{mask(url)} holds no Optuna studies (no Optuna tables); "
                           "check --storage or $OPTUNA_STORAGE")
