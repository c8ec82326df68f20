"""Each private Optuna name studies/optuna_internals.py holds, exercised: an Optuna release that
moves one fails here, not in a search."""

from __future__ import annotations

import importlib

import optuna
import pytest

from search.retry import Retry, RetryingStorage
from studies import optuna_internals
from studies.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def test_the_retrying_storage_implements_every_abstract_method(sqlite_url: str) -> None:
    storage = RetryingStorage(open_storage(sqlite_url), Retry())  # abstract: TypeError here
    assert isinstance(storage.inner, optuna.storages.BaseStorage)
    assert isinstance(storage, optuna_internals.BaseHeartbeat)  # Optuna beats and checks it


def test_trial_ids_stale_checks_and_constraints(sqlite_url: str) -> None:
    storage = RetryingStorage(open_storage(sqlite_url, heartbeat_interval=1, grace_period=2), Retry())
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.record_heartbeat(optuna_internals.trial_id(trial))
    assert storage.stale_trial_ids(study._study_id) == []
    optuna_internals.set_constraints(trial, {"short": 0.5, "slower": -0.1})
    study.tell(trial, 1.0)
    stored = study.trials[0]
    assert stored.system_attrs["constraints"] == [0.5, -0.1]  # what optuna-dashboard reads
    assert stored.constraints == {"short": 0.5, "slower": -0.1, "0": 0.5, "1": -0.1}


def test_the_quieted_logger_is_the_rdb_storages() -> None:
    module = importlib.import_module(optuna_internals.RDB_STORAGE_LOGGER)
    assert module.__name__ == optuna_internals.RDB_STORAGE_LOGGER
