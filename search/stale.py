"""Trials of dead workers: failed, and their parameters queued again, even if the failing worker dies too.

Optuna's `fail_stale_trials` marks a stale trial FAILED and then, in a second transaction, queues
its retry (the storage's RetryHeartbeatStaleTrialCallback). A worker killed between the two — its
heartbeat thread runs the check every interval, so a SIGKILL can land there — leaves the trial
FAILED with no retry, and its parameters are never run again. So every check also looks for such
orphans and queues their retry:

- an orphan is a worker's trial (it has the `worker` attribute) that is FAILED without a
  `fail_reason` (a worker writes one for every trial it fails itself; only the stale check fails
  without one), no trial names it last in its `retry_history`, and it was failed longer than the
  grace period ago (a live checker queues within milliseconds);
- its retry goes through the same callback, so it carries the same `retry_history` and the same
  limit of re-runs. Two checkers that see one orphan at the same moment may both queue it: a
  config run twice costs a run; a config never run again is a hole in the search.
"""

from __future__ import annotations

import copy
import datetime
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from objective import attributes
from studies.optuna_internals import HeartbeatInterface


def fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials of dead workers FAILED (the storage's callback queues each one's retry)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def requeue_orphans(study: optuna.Study, storage: HeartbeatInterface, grace_period: float) -> list[int]:
    """Queue the retry that a checker died before queueing; returns the orphans' numbers."""
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is None:
        return []
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs[attributes.RETRY_HISTORY][-1]
               for t in trials if t.system_attrs.get(attributes.RETRY_HISTORY)}
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace_period)
    orphans = [t for t in trials if t.number not in retried and _failed_by_stale_check(t, cutoff)]
    for orphan in orphans:
        callback(study, copy.deepcopy(orphan))
    return [orphan.number for orphan in orphans]


def _failed_by_stale_check(trial: FrozenTrial, cutoff: datetime.datetime) -> bool:
    return (trial.state == TrialState.FAIL and attributes.WORKER in trial.user_attrs
            and attributes.FAIL_REASON not in trial.user_attrs
            and trial.datetime_complete is not None and trial.datetime_complete < cutoff)
