"""Every use of an Optuna name that is not public API, each with the reason nothing public does.

Optuna is pinned below 6 (pyproject.toml); tests/studies/test_optuna_internals.py exercises each
name here, so a release that moves one fails a test instead of a search.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import optuna
from optuna.storages import RDBStorage, _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial

from objective import attributes

# The logger of RDBStorage, which logs a warning for each database error before raising it;
# search/retry.py reports each such error once, with its retry, so the worker quiets this one.
RDB_STORAGE_LOGGER = "optuna.storages._rdb.storage"


class HeartbeatInterface(BaseHeartbeat):
    """Optuna's heartbeat interface. Optuna beats a trial, and `fail_stale_trials` looks for stale
    trials, only in a storage that is an instance of BaseHeartbeat, which lives in a private
    module and has one private-named abstract method; here it is forwarded to a public name."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    @abc.abstractmethod
    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The study's RUNNING trials whose last heartbeat is older than the grace period."""


def has_heartbeats(storage: object) -> bool:
    """Whether `storage` speaks Optuna's heartbeat interface (RDBStorage, the retrying storage; not
    the in-memory one a simulated fleet may use)."""
    return isinstance(storage, BaseHeartbeat)


def cached(backend: RDBStorage) -> _CachedStorage:
    """Optuna's read cache over an RDBStorage: what `create_study(storage=RDBStorage)` builds
    itself. Without it every ask reads every trial of the study again."""
    return _CachedStorage(backend)


def trial_id(trial: optuna.Trial) -> int:
    """The trial's storage id. Heartbeats are recorded by id, and a Trial exposes only its number."""
    return trial._trial_id


def frozen_trial_id(trial: FrozenTrial) -> int:
    """A stored trial's id, for the journal's heartbeat table: a FrozenTrial exposes only its number."""
    return trial._trial_id


def stale_trial_ids(storage: BaseHeartbeat, study_id: int) -> list[int]:
    """The heartbeat interface's own abstract method, which a delegating storage must forward."""
    return storage._get_stale_trial_ids(study_id)


def set_constraints(trial: optuna.Trial, constraints: Mapping[str, float]) -> None:
    """The trial's constraints, each under Optuna 5's `constraints:<name>` system attribute, and
    as the list `constraints`, which optuna-dashboard 0.21 reads (and Optuna as "0", "1", ...).
    Written directly: `Trial.set_constraint` re-reads the whole trial for each one (8 statements
    on Postgres, where this takes 2) and never writes the dashboard's list."""
    storage, trial_id_ = trial.storage, trial_id(trial)
    for name, value in constraints.items():
        storage.set_trial_system_attr(trial_id_, f"constraints:{name}", float(value))
    storage.set_trial_system_attr(trial_id_, attributes.CONSTRAINTS, [float(v) for v in constraints.values()])
