from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

from search.stale import fail_stale_trials, requeue_orphans
from studies.storage import open_storage

GRACE = 1  # seconds
PAST_GRACE = GRACE + 1.5  # SQLite's clock for heartbeats counts whole seconds


def running(study: optuna.Study, x: float) -> optuna.Trial:
    """A worker's trial (search.worker writes the `worker` attribute first), beating."""
    study.enqueue_trial({"x": x})
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.set_user_attr("worker", {"pid": 1})
    study._storage.record_heartbeat(trial._trial_id)
    return trial


def test_a_retry_the_failing_worker_died_before_queueing_is_queued_once(sqlite_url: str) -> None:
    study = optuna.create_study(storage=open_storage(sqlite_url, heartbeat_interval=1, grace_period=GRACE))
    stale, orphan, own_failure = running(study, 0.1), running(study, 0.2), running(study, 0.3)
    time.sleep(PAST_GRACE)
    # A checker that dies between its two writes: the trial FAILED, its retry never queued.
    study._storage.set_trial_state_values(orphan._trial_id, TrialState.FAIL)
    own_failure.set_user_attr("fail_reason", "RuntimeError: a bug")  # what the worker writes
    study.tell(own_failure, state=TrialState.FAIL)
    study.enqueue_trial({"x": 0.4})
    study.tell(study.ask(), state=TrialState.FAIL)  # not a worker's: Study.optimize writes no reason
    fail_stale_trials(study)  # the whole path, for `stale`: FAILED, then its retry queued
    # Within the grace period a live checker is still queueing.
    assert requeue_orphans(study, study._storage, GRACE) == []
    time.sleep(PAST_GRACE)

    assert requeue_orphans(study, study._storage, GRACE) == [orphan.number]
    assert requeue_orphans(study, study._storage, GRACE) == []
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    assert sorted((t.system_attrs["retry_history"], t.params["x"]) for t in waiting) == [
        ([stale.number], 0.1), ([orphan.number], 0.2)]
