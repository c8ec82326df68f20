"""search.retry in-process: the backoff schedule, giving up after the patience, what counts as
transient, and the idempotency of a retried write whose first attempt committed before its
connection died. Also the trial loop's answer to a trial ended by another worker meanwhile."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from search.heartbeat import Heartbeat
from search.loop import run_trial
from search.retry import DatabaseUnavailable, Retry, RetryingStorage, is_transient, storage_failure
from studies.spec import load_spec
from studies.storage import create_or_load, open_storage
from tests.search.workers import SMOKE, StandIn

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                                        "ignore::FutureWarning", "ignore:Heartbeat of storage")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def lost_connection() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))


class FakeTime:
    """A clock that only moves when the retry sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def retry(self, patience: float) -> Retry:
        return Retry(patience=patience, sleep=self.sleep, clock=lambda: self.now)


def failing(times: int, error: Callable[[], Exception] = lost_connection) -> Callable[[], str]:
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error()
        return "ok"

    return call


def test_backoff_doubles_up_to_16_s_and_the_attempts_fit_the_patience() -> None:
    assert Retry(patience=120).delays() == [1, 2, 4, 8, 16, 16, 16, 16, 16, 16, 9]
    assert Retry(patience=120).attempts == 12
    assert Retry(patience=4).delays() == [1, 2, 1]


def test_a_blip_is_retried_with_one_line_per_wait(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeTime()
    with caplog.at_level(logging.WARNING, logger="search"):
        assert clock.retry(120).call("tell", failing(3)) == "ok"
    assert clock.slept == [1, 2, 4]
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == ("database unreachable (tell: server closed the connection); retrying in 1 s "
                        "(attempt 2/12, giving up after --db-patience 120 s)")
    assert len(lines) == 3 and "retrying in 4 s (attempt 4/12" in lines[2]


def test_a_database_away_past_the_patience_is_given_up_on() -> None:
    clock = FakeTime()
    with pytest.raises(DatabaseUnavailable) as raised:
        clock.retry(4).call("ask", failing(100))
    assert clock.slept == [1, 2, 1] and clock.now == 4
    assert str(raised.value) == ("the database stayed unreachable for 4 s (4 attempts; last, during ask: "
                                 "server closed the connection)")


@pytest.mark.parametrize("error", [
    lambda: sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
    lambda: ValueError("a bug"),
    lambda: optuna.exceptions.StorageInternalError("invalid data in the commit"),
])
def test_other_errors_are_not_retried(error: Callable[[], Exception]) -> None:
    clock = FakeTime()
    with pytest.raises(Exception) as raised:
        clock.retry(120).call("tell", failing(1, error))
    assert type(raised.value) is type(error()) and clock.slept == []


def test_optunas_wrapper_around_a_lost_connection_is_transient() -> None:
    try:
        try:
            raise lost_connection()
        except sqlalchemy.exc.SQLAlchemyError as cause:
            raise optuna.exceptions.StorageInternalError("raised during the commit") from cause
    except optuna.exceptions.StorageInternalError as wrapped:
        assert is_transient(wrapped)


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    storage = RetryingStorage(open_storage(f"sqlite:///{tmp_path / 'r.db'}"), FakeTime().retry(patience=5))
    return create_or_load(load_spec(SMOKE), storage, sampler_seed=0)[0]


def commit_then_lose_the_answer(study: optuna.Study, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The backend's state change commits, and then the connection dies before the answer arrives:
    the retry must see that it is done, not fail on a trial that is already finished."""
    backend = study._storage.backend
    real = backend.set_trial_state_values
    seen: list[str] = []

    def once(trial_id: int, state: TrialState, values: object = None) -> bool:
        real(trial_id, state=state, values=values)
        if not seen:
            seen.append(state.name)
            raise optuna.exceptions.StorageInternalError("commit") from lost_connection()
        return real(trial_id, state=state, values=values)

    monkeypatch.setattr(backend, "set_trial_state_values", once)
    return seen


def test_a_tell_that_committed_before_the_connection_died_is_done(study: optuna.Study,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    trial = study.ask()
    seen = commit_then_lose_the_answer(study, monkeypatch)
    told = study.tell(trial, 1.5)
    assert seen == ["COMPLETE"]
    assert told.state == TrialState.COMPLETE and told.value == 1.5
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]


def test_taking_a_waiting_trial_that_committed_before_the_connection_died(
        study: optuna.Study, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = commit_then_lose_the_answer(study, monkeypatch)
    trial = study.ask()  # the enqueued baseline: WAITING -> RUNNING, committed, answer lost
    assert seen == ["RUNNING"]
    assert trial.number == 0 and trial.user_attrs == {"baseline": True}
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]  # no second, orphaned trial


def reads_fail(study: optuna.Study, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of trials loses its connection; returns the names of the threads that tried."""
    calls: list[str] = []

    def down(*args: object, **kwargs: object) -> None:
        calls.append(threading.current_thread().name)
        raise lost_connection()

    monkeypatch.setattr(study._storage.backend, "_get_trials", down)
    return calls


def read_in_thread(study: optuna.Study, name: str, adopt: bool) -> BaseException | None:
    """study.get_trials() on a thread of its own (adopted by the storage or not); its error."""
    errors: list[BaseException] = []

    def read() -> None:
        if adopt:
            study._storage.adopt_thread()
        try:
            study.get_trials()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=read, name=name)
    thread.start()
    thread.join()
    return errors[0] if errors else None


def test_a_waiting_trial_another_worker_took_while_sqlite_was_locked_is_not_taken_twice(
        study: optuna.Study, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two workers on one SQLite file pop the baseline at once: the other one commits first, so
    this one's write meets "database is locked" and nothing of it is written. The retry then finds
    the trial RUNNING, and must see it as the other worker's, not as its own lost answer."""
    other = open_storage(f"sqlite:///{tmp_path / 'r.db'}")
    backend = study._storage.backend
    real = backend.set_trial_state_values
    seen: list[str] = []

    def locked(trial_id: int, state: TrialState, values: object = None) -> bool:
        if not seen:
            seen.append(state.name)
            other.set_trial_state_values(trial_id, TrialState.RUNNING)  # the other worker wins
            raise sqlalchemy.exc.OperationalError("UPDATE trials", {},
                                                  sqlite3.OperationalError("database is locked"))
        return real(trial_id, state=state, values=values)

    monkeypatch.setattr(backend, "set_trial_state_values", locked)
    trial = study.ask()
    assert seen == ["RUNNING"]
    assert trial.number == 1  # a new trial: the baseline (number 0) is the other worker's
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.RUNNING]


def test_only_the_owning_thread_retries(study: optuna.Study, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = reads_fail(study, monkeypatch)
    error = read_in_thread(study, "heartbeat-1", adopt=False)
    assert calls == ["heartbeat-1"] and error is not None and is_transient(error)  # at once, not retried
    with pytest.raises(DatabaseUnavailable):
        study.get_trials()  # the owner retries until the (fake) patience runs out
    assert len(calls) > 2


def test_a_thread_the_owner_hands_its_work_to_retries_too(study: optuna.Study,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The --prefetch pipeline's background thread does the owner's storage work: it adopts the
    owner's retries, and its errors after the patience are the owner's DatabaseUnavailable."""
    calls = reads_fail(study, monkeypatch)
    error = read_in_thread(study, "storage", adopt=True)
    assert len(calls) > 2 and set(calls) == {"storage"}
    assert isinstance(error, DatabaseUnavailable)


def test_a_trial_ended_by_another_worker_meanwhile_is_dropped_not_fatal(
        study: optuna.Study, caplog: pytest.LogCaptureFixture) -> None:
    """This worker's heartbeats missed the grace period (an outage), so another worker's stale
    check failed its trial and re-queued it; when this worker comes back, it drops its result."""

    def train(trial: optuna.Trial) -> float:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # "another worker"
        return 1.0

    def record(trial: optuna.Trial, value: float) -> None:
        trial.set_user_attr("accuracy", 0.99)

    heartbeat = Heartbeat(study, study._storage, grace_period=20)

    with caplog.at_level(logging.WARNING, logger="search"):
        trial = run_trial(study, StandIn(train, record), heartbeat, {})  # type: ignore[arg-type]
    assert trial.state == TrialState.FAIL and "accuracy" not in trial.user_attrs
    assert "was ended as FAIL by another worker" in caplog.text
    again = run_trial(study, StandIn(lambda trial: 2.0), heartbeat, {})  # type: ignore[arg-type]
    assert again.state == TrialState.COMPLETE  # the loop goes on


def wrapped(cause: BaseException) -> optuna.exceptions.StorageInternalError:
    """`cause` as Optuna's storage raises it: inside its "invalid data in the commit" wrapper."""
    try:
        try:
            raise cause
        except sqlalchemy.exc.SQLAlchemyError as error:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") \
                from error
    except optuna.exceptions.StorageInternalError as outer:
        return outer


def test_a_storage_failure_names_what_the_database_said_not_optunas_wrapper() -> None:
    refused = sqlalchemy.exc.OperationalError("SELECT 1", {},
                                              ConnectionRefusedError("connection refused\nmore"))
    assert storage_failure(wrapped(refused)) == "connection refused"
    stuck = sqlalchemy.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back.")
    assert storage_failure(wrapped(stuck)) == "Can't reconnect until invalid transaction is rolled back."
    assert storage_failure(RuntimeError("plain\nsecond line")) == "plain"
