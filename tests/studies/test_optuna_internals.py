"""Each private Optuna name studies/optuna_internals.py holds, doing what the project uses it for, on
real Optuna studies (SQLite, or in memory where a storage of our own is the point): an Optuna release
that moves or changes one fails here, not in a search."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.storages import InMemoryStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from objective.optuna_objective import set_each_constraint
from search.retry import Retry, RetryingStorage
from studies import optuna_internals
from studies.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                                        "ignore:Heartbeat of storage")  # ask() on a storage that beats


class NamedStale(InMemoryStorage, optuna_internals.HeartbeatInterface):
    """An in-memory storage with heartbeats whose stale trials are the ones the test names."""

    def __init__(self) -> None:
        super().__init__()
        self.stale: list[int] = []
        self.beats: list[int] = []

    def record_heartbeat(self, trial_id: int) -> None:
        self.beats.append(trial_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        return list(self.stale)

    def get_heartbeat_interval(self) -> int | None:
        return 60

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return None


def test_optuna_beats_and_fails_what_the_heartbeat_interface_says() -> None:
    storage = NamedStale()
    assert optuna_internals.has_heartbeats(storage)
    study = optuna.create_study(storage=storage)
    study.optimize(lambda trial: 1.0, n_trials=1)  # Optuna's own heartbeat thread beats trial 0
    assert storage.beats and set(storage.beats) == {optuna_internals.frozen_trial_id(study.trials[0])}
    alive, dead = study.ask(), study.ask()
    storage.stale = [optuna_internals.trial_id(dead)]
    assert optuna_internals.stale_trial_ids(storage, study._study_id) == storage.stale
    optuna.storages.fail_stale_trials(study)  # Optuna's check reads our public name
    states = {t.number: t.state for t in study.trials}
    assert (states[alive.number], states[dead.number]) == (TrialState.RUNNING, TrialState.FAIL)


def test_a_heartbeat_storage_without_stale_trial_ids_is_abstract() -> None:
    class Forgetful(InMemoryStorage, optuna_internals.HeartbeatInterface):
        def record_heartbeat(self, trial_id: int) -> None: ...

        def get_heartbeat_interval(self) -> int | None:
            return 60

        def get_heartbeat_stale_trial_callback(self) -> None:
            return None

    with pytest.raises(TypeError, match="stale_trial_ids"):
        Forgetful()  # type: ignore[abstract]


def test_which_storages_have_heartbeats(sqlite_url: str) -> None:
    rdb = open_storage(sqlite_url)
    assert optuna_internals.has_heartbeats(rdb)
    assert optuna_internals.has_heartbeats(RetryingStorage(rdb, Retry()))  # abstract: TypeError here
    assert not optuna_internals.has_heartbeats(InMemoryStorage())


def test_cached_is_the_cache_create_study_puts_over_an_rdb_storage(sqlite_url: str) -> None:
    rdb = RDBStorage(sqlite_url)
    cache = optuna_internals.cached(rdb)
    assert type(cache) is type(optuna.create_study(storage=rdb, study_name="built by Optuna")._storage)
    study = optuna.create_study(storage=cache, study_name="through the cache")
    study.set_user_attr("written", True)
    study.tell(study.ask(), 2.0)
    stored = optuna.load_study(study_name="through the cache", storage=rdb)  # the database itself
    assert stored.user_attrs == {"written": True} and [t.value for t in stored.trials] == [2.0]


def test_trial_ids_are_the_storages_not_the_trial_numbers(sqlite_url: str) -> None:
    storage = RDBStorage(sqlite_url)
    optuna.create_study(storage=storage, study_name="before").ask()  # takes an id of its own
    study = optuna.create_study(storage=storage, study_name="this")
    trial = study.ask()
    stored_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, trial.number)
    assert optuna_internals.trial_id(trial) == stored_id != trial.number
    study.tell(trial, 1.0)
    assert optuna_internals.frozen_trial_id(study.trials[0]) == stored_id


def test_stale_trial_ids_are_the_running_trials_past_the_grace_period(tmp_path: Path) -> None:
    path = tmp_path / "heartbeats.db"
    storage = RDBStorage(f"sqlite:///{path}", heartbeat_interval=1, grace_period=60)
    study = optuna.create_study(storage=storage)
    beating, dead, finished = study.ask(), study.ask(), study.ask()
    for trial in (beating, dead, finished):
        storage.record_heartbeat(optuna_internals.trial_id(trial))
    study.tell(finished, 1.0)
    with contextlib.closing(sqlite3.connect(path)) as db:  # two beats from long ago
        db.execute("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00.000000' "
                   "WHERE trial_id IN (?, ?)",
                   (optuna_internals.trial_id(dead), optuna_internals.trial_id(finished)))
        db.commit()
    assert optuna_internals.stale_trial_ids(storage, study._study_id) == [optuna_internals.trial_id(dead)]


def test_set_constraints_writes_optunas_constraints_and_the_dashboards_list(sqlite_url: str) -> None:
    study = optuna.create_study(storage=sqlite_url)
    ours, public = study.ask(), study.ask()
    optuna_internals.set_constraints(ours, {"short": 0.5, "slower": -0.1})
    set_each_constraint(public, {"short": 0.5, "slower": -0.1})  # Optuna's public way
    study.tell(ours, 1.0)
    study.tell(public, 1.0)
    stored, reference = study.trials
    assert stored.system_attrs["constraints"] == [0.5, -0.1]  # what optuna-dashboard reads
    assert stored.constraints == {**reference.constraints, "0": 0.5, "1": -0.1}
    assert reference.constraints == {"short": 0.5, "slower": -0.1}


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_quieted_logger_is_the_one_rdb_storage_logs_through(sqlite_url: str) -> None:
    logger, records = logging.getLogger(optuna_internals.RDB_STORAGE_LOGGER), Records()
    level = logger.level
    logger.addHandler(records)
    try:
        logger.setLevel(logging.INFO)
        optuna.create_study(storage=sqlite_url, study_name="heard")  # RDBStorage logs it, at INFO
        logger.setLevel(logging.ERROR)  # what the worker does (search/session.py)
        optuna.create_study(storage=sqlite_url, study_name="quieted")
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    assert any("heard" in message for message in records.messages)
    assert not any("quieted" in message for message in records.messages)
