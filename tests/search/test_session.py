"""The worker's session in-process (search/session.py's `search`, and search/loop.py's `run_trial`
under it), with stand-in objectives (no training): how each way a trial can end is stored, when the
loop stops, heartbeats, stale trials, and the signal state machine."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from objective.trainer_process import TrainingFailed
from search import loop
from search.clock import SYSTEM, Clock
from search.device_lock import Claim
from search.devices import Device
from search.heartbeat import Heartbeat
from search.loop import MAX_FAILURES_IN_A_ROW
from search.retry import Retry, RetryingStorage
from search.session import Worker, check_same_recipe, default_sampler_seed, search
from search.signals import GracefulStop, WorkerInterrupted
from studies.spec import SpecError, StudySpec, load_spec
from studies.storage import create_or_load, open_storage
from tests.search.workers import SMOKE, StandIn

optuna.logging.set_verbosity(optuna.logging.WARNING)
# The worker silences these in main(); here its functions are called directly.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                                        "ignore::FutureWarning", "ignore:Heartbeat of storage")

Objective = Callable[[optuna.Trial], float]


@pytest.fixture
def spec() -> StudySpec:
    return load_spec(SMOKE)


@pytest.fixture
def study(spec: StudySpec, sqlite_url: str) -> optuna.Study:
    storage = RetryingStorage(open_storage(sqlite_url), Retry())
    return create_or_load(spec, storage, sampler_seed=0)[0]


def run_trial(study: optuna.Study, objective: StandIn, attrs: dict[str, object]) -> optuna.trial.FrozenTrial:
    """search.loop.run_trial with a heartbeat of its own, as the worker gives it."""
    heartbeat = Heartbeat(study, study._storage, grace_period=20)
    try:
        return loop.run_trial(study, objective, heartbeat, attrs)  # type: ignore[arg-type]
    finally:
        heartbeat.close()


def worker_for(study: optuna.Study, spec: StudySpec, objective: StandIn, prefetch: bool,
               deadline: float | None = None, clock: Clock = SYSTEM) -> Worker:
    # A device that holds nothing: these workers train nothing, and search() closes it at the end.
    device = Device(run=lambda config, limit: None, claim=Claim("nothing", shared=True, handles=[]),  # type: ignore[arg-type,return-value]
                    name="nothing", fingerprint={}, simulated=True)
    return Worker(spec, study, study._storage, objective, device, {"worker": {"pid": 1}},  # type: ignore[arg-type]
                  prefetch=prefetch, grace_period=20, clock=clock, deadline=deadline)


def run_search(study: optuna.Study, spec: StudySpec, objective: Objective, n_trials: int | None = None,
               timeout: float | None = None, prefetch: bool = False, deadline: float | None = None,
               clock: Clock = SYSTEM) -> int:
    worker = worker_for(study, spec, StandIn(objective), prefetch, deadline, clock)
    args = argparse.Namespace(n_trials=n_trials, timeout=timeout, no_progress=True, db_patience=120)
    return search(worker, args, GracefulStop())


def raising(error: BaseException) -> Objective:
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 0.003, 0.03, log=True)
        raise error

    return objective


@pytest.mark.parametrize(("error", "reason"), [
    (ValueError("a bug in the objective"), "ValueError: a bug in the objective"),
    (TrainingFailed("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail"),
     "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"),
     "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"),
    (MemoryError(), "MemoryError: (no message)"),
    (WorkerInterrupted(signal.SIGTERM), "worker interrupted (SIGTERM)"),
])
def test_an_exception_fails_the_trial_with_its_reason(study: optuna.Study, error: BaseException,
                                                      reason: str) -> None:
    trial = run_trial(study, StandIn(raising(error)), {"worker": {"pid": 1}})
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == reason
    assert trial.user_attrs["worker"] == {"pid": 1}
    assert study.get_trials(deepcopy=False)[0].state == TrialState.FAIL  # stored, not only returned


def test_values_and_prunes_are_told(study: optuna.Study) -> None:
    assert run_trial(study, StandIn(lambda trial: 1.5), {}).state == TrialState.COMPLETE
    assert run_trial(study, StandIn(raising(optuna.TrialPruned("too slow"))), {}).state == TrialState.PRUNED
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert study.get_trials()[0].user_attrs["baseline"] is True  # the first ask ran the baseline


def test_the_loop_goes_on_after_a_failed_trial(study: optuna.Study, spec: StudySpec) -> None:
    def fails_once(trial: optuna.Trial) -> float:
        if trial.number == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return 2.0

    assert run_search(study, spec, fails_once, n_trials=3) == 0
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.FAIL,
                                                     TrialState.COMPLETE]


def test_the_loop_gives_up_on_an_objective_that_always_fails(study: optuna.Study, spec: StudySpec) -> None:
    assert run_search(study, spec, raising(ValueError("broken")), n_trials=50) == 1
    trials = study.get_trials()
    assert len(trials) == MAX_FAILURES_IN_A_ROW
    # Failed with its message, and not re-queued: only a dead worker's trial is retried.
    assert {t.user_attrs["fail_reason"] for t in trials} == {"ValueError: broken"}
    assert not any("failed_trial" in t.system_attrs for t in trials)


def test_the_loop_stops_at_the_study_budget_counting_every_worker(study: optuna.Study,
                                                                   spec: StudySpec) -> None:
    run_trial(study, StandIn(lambda trial: 3.0), {})  # "another worker" finished one already
    run_trial(study, StandIn(raising(ValueError("x"))), {})  # a failure does not count against the budget
    assert run_search(study, spec=dataclasses.replace(spec, n_trials=3), objective=lambda t: 2.0) == 0
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 3


class TrialClock:
    """The worker's clock, moved only by the trials: each takes 0.4 s of it (and none of the host's)."""

    def __init__(self, start: float = 0.0) -> None:
        self.start, self.now = start, 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.start + self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def trial(self, trial: optuna.Trial) -> float:
        self.sleep(0.4)
        return 1.0


def test_the_loop_starts_no_trial_past_the_studys_minutes(study: optuna.Study, spec: StudySpec,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    minutes = dataclasses.replace(spec, minutes=1.0 / 60)  # one second, from the study's creation
    created = study.user_attrs["created_at"]
    clock = TrialClock(start=created)
    with caplog.at_level("INFO", logger="search"):
        assert run_search(study, minutes, clock.trial, deadline=created + 1.0, clock=clock) == 0
    assert len(study.get_trials()) == 3  # started at 0, 0.4 and 0.8 s; none at 1.2 s
    assert "the study's budget is reached (0.0166667 minutes since it was created)" in caplog.text


def test_the_loop_starts_no_trial_after_the_timeout(study: optuna.Study, spec: StudySpec) -> None:
    clock = TrialClock()
    assert run_search(study, spec, clock.trial, timeout=1.0, clock=clock) == 0
    assert len(study.get_trials()) == 3  # started at 0, 0.4 and 0.8 s; none at 1.2 s


def test_heartbeats_keep_a_long_trial_alive_and_a_dead_workers_trial_is_retried(
        spec: StudySpec, tmp_path: Path) -> None:
    # A 1 s heartbeat and a 3 s grace period, so staleness shows within seconds.
    path = tmp_path / "hb.db"

    def heartbeat_age(trial_id: int) -> float:
        with contextlib.closing(sqlite3.connect(path)) as db:
            (age,) = db.execute("SELECT (julianday('now') - julianday(heartbeat)) * 86400 FROM "
                                "trial_heartbeats WHERE trial_id = ?", (trial_id,)).fetchone()
        return age

    storage = RDBStorage(f"sqlite:///{path}", heartbeat_interval=1, grace_period=3,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    study = create_or_load(spec, storage, sampler_seed=0)[0]
    dead = study.ask()  # a worker that died: it recorded one heartbeat, then nothing
    storage.record_heartbeat(dead._trial_id)

    def long_trial(trial: optuna.Trial) -> float:
        time.sleep(4.0)  # longer than the grace period: only the heartbeat thread keeps it alive
        assert heartbeat_age(trial._trial_id) < 3.0  # younger than the grace period: beaten meanwhile
        assert trial._trial_id not in storage._get_stale_trial_ids(study._study_id)
        return 1.0

    time.sleep(4.5)  # past the grace period, with room for SQLite's whole-second timestamps
    Heartbeat(study, storage, grace_period=3).check_stale()  # what a worker does before its first ask
    trial = run_trial(study, StandIn(long_trial), {})
    assert trial.state == TrialState.COMPLETE
    assert study.get_trials()[dead.number].state == TrialState.FAIL
    # The stale trial's retry (a copy with its params) was waiting, so this run was that retry.
    assert trial.system_attrs.get("failed_trial") == dead.number


def test_a_spec_edited_since_the_study_was_created_is_refused(study: optuna.Study, spec: StudySpec) -> None:
    check_same_recipe(study, spec, "sqlite:///x.db")  # the same spec: fine
    edited = dataclasses.replace(spec, base=spec.base.replace(train_subset=12000))
    with pytest.raises(SpecError, match=r"different \[train\] section \(differs in: train_subset\)"):
        check_same_recipe(study, edited, "sqlite:///x.db")


@pytest.mark.parametrize("change", [{"accuracy_margin": 0.002}, {"crown_seeds": 3}, {"repeats": 2},
                                    {"slower_margin": 0.2}, {"slower_runs": 2},
                                    {"slower_margin_one_run": 0.7}, {"accuracy_target": 0.98}])
def test_a_worker_with_another_bar_is_refused(study: optuna.Study, spec: StudySpec,
                                              change: dict[str, float]) -> None:
    # a lower-bar worker's trials would compete in export with the study's
    edited = dataclasses.replace(spec, objective=dataclasses.replace(spec.objective, **change))
    (name,) = change
    with pytest.raises(SpecError, match=rf"another \[objective\] \(differs in: {name} "):
        check_same_recipe(study, edited, "sqlite:///x.db")


def test_second_signal_raises_only_inside_an_interruptible_region() -> None:
    stop = GracefulStop()
    stop._handle(signal.SIGTERM, None)
    assert stop.requested and not stop.aborted
    with stop.interruptible():
        pass  # the first signal never raises
    stop._handle(signal.SIGTERM, None)  # outside a region: remembered, not raised
    assert stop.aborted and stop.exit_code == 143
    with pytest.raises(WorkerInterrupted), stop.interruptible():
        pytest.fail("the region must not start once the worker is aborting")

    inside = GracefulStop()
    inside._handle(signal.SIGINT, None)
    with pytest.raises(WorkerInterrupted), inside.interruptible():
        inside._handle(signal.SIGINT, None)
    assert inside.exit_code == 130


# -- --prefetch: the storage work of the next and the last trial while this one trains ----------

def test_prefetch_asks_the_next_trial_while_this_one_trains(study: optuna.Study, spec: StudySpec) -> None:
    def trains(trial: optuna.Trial) -> float:
        time.sleep(0.3)
        return 1.0 + trial.number

    assert run_search(study, spec, trains, n_trials=4, prefetch=True) == 0
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # no fifth trial asked: --n-trials known
    for current, following in itertools.pairwise(trials):
        assert following.datetime_start < current.datetime_complete  # asked during the training
    assert [t.value for t in trials] == [1.0, 2.0, 3.0, 4.0]
    # Trial N+1 is asked after trial N-1 is told: the sampler sees every trial but the training one.
    for before, following in zip(trials, trials[2:], strict=False):
        assert before.datetime_complete <= following.datetime_start


def test_prefetch_stops_at_the_study_budget_without_an_extra_trial(study: optuna.Study,
                                                                     spec: StudySpec) -> None:
    assert run_search(study, dataclasses.replace(spec, n_trials=3), lambda t: 2.0, prefetch=True) == 0
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3


def test_prefetch_a_trial_asked_before_a_stop_turns_failed_as_not_run(study: optuna.Study,
                                                                       spec: StudySpec) -> None:
    stop = GracefulStop()

    def signalled(trial: optuna.Trial) -> float:
        time.sleep(0.3)  # trial 1 is asked meanwhile
        stop._handle(signal.SIGTERM, None)
        return 1.0

    worker = worker_for(study, spec, StandIn(signalled), prefetch=True)
    args = argparse.Namespace(n_trials=None, timeout=None, no_progress=True, db_patience=120)
    assert search(worker, args, stop) == 0
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trials[1].user_attrs["fail_reason"] == "not run: SIGTERM received before its turn"


def test_prefetch_gives_up_on_an_objective_that_always_fails(study: optuna.Study, spec: StudySpec) -> None:
    assert run_search(study, spec, raising(ValueError("broken")), n_trials=50, prefetch=True) == 1
    trials = study.get_trials()
    assert all(t.state == TrialState.FAIL for t in trials)
    # The count lags one trial behind the training, so the trial asked meanwhile is not run.
    ran = [t for t in trials if t.user_attrs["fail_reason"] == "ValueError: broken"]
    assert MAX_FAILURES_IN_A_ROW <= len(ran) <= MAX_FAILURES_IN_A_ROW + 1
    assert len(trials) - len(ran) <= 1


def test_workers_in_containers_draw_their_own_sampler_seeds(spec: StudySpec,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # every container's worker is pid 1; its host name is what tells replicas apart
    monkeypatch.setattr("os.getpid", lambda: 1)
    seeds = set()
    for host in ("worker-0", "worker-1", "worker-2"):
        monkeypatch.setattr("socket.gethostname", lambda host=host: host)
        seeds.add(default_sampler_seed(dataclasses.replace(spec, sampler_seed=0)))
    assert len(seeds) == 3
