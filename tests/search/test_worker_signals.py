"""SIGINT/SIGTERM sent to a real worker in the middle of a trial: the first lets the trial finish and
the worker exit 0; a second aborts the trial, which is stored as FAILED with a reason, and the worker
exits 128 + the signal. Either way no trial is left RUNNING. Each signal is sent once to a worker on
SQLite and once to one on Postgres."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.search.workers import FAST, SLOW, STARTUP, Spawn, account, spec_file


@pytest.fixture
def slow_spec(tmp_path: Path) -> Path:
    return spec_file(tmp_path, **SLOW)


# (signal, the fixture naming the storage): each signal meets each storage once over the two tests.
FIRST = [(signal.SIGINT, "sqlite_url"), (signal.SIGTERM, "postgres_url")]
SECOND = [(signal.SIGTERM, "sqlite_url"), (signal.SIGINT, "postgres_url")]


def pair_id(value: object) -> str:
    return signal.Signals(value).name if isinstance(value, signal.Signals) else str(value).split("_")[0]


@pytest.mark.parametrize(("signum", "storage"), FIRST, ids=pair_id)
def test_first_signal_finishes_the_running_trial_then_exits_0(spawn_worker: Spawn, slow_spec: Path,
                                                               request: pytest.FixtureRequest, signum: int,
                                                               storage: str) -> None:
    url = request.getfixturevalue(storage)
    name = signal.Signals(signum).name
    worker = spawn_worker("--spec", str(slow_spec), "--storage", url, "--n-trials", "5",
                          "--verbose", *FAST)
    worker.wait_for("trial 0 started", timeout=STARTUP)
    worker.process.send_signal(signum)
    result = worker.finish(timeout=120)
    assert result.returncode == 0, worker.output()
    assert f"{name} received: stopping after the current trial" in result.stdout
    assert f"stopped: {name} received" in result.stdout
    assert result.stderr == "", worker.output()
    study = optuna.load_study(study_name="smoke", storage=url)
    assert account(study).finished == 1  # and nothing left RUNNING
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] in ([TrialState.COMPLETE], [TrialState.PRUNED])
    assert "accuracy" in trials[0].user_attrs  # it trained to the end


@pytest.mark.parametrize(("signum", "storage"), SECOND, ids=pair_id)
def test_second_signal_fails_the_running_trial_and_exits_128_plus_signal(
        spawn_worker: Spawn, slow_spec: Path, request: pytest.FixtureRequest, signum: int,
        storage: str) -> None:
    url = request.getfixturevalue(storage)
    name = signal.Signals(signum).name
    worker = spawn_worker("--spec", str(slow_spec), "--storage", url, "--n-trials", "5",
                          "--verbose", *FAST)
    worker.wait_for("trial 0 started", timeout=STARTUP)
    worker.process.send_signal(signum)
    worker.wait_for("stopping after the current trial", timeout=10)
    worker.process.send_signal(signum)
    result = worker.finish(timeout=60)
    assert result.returncode == 128 + signum, worker.output()
    assert f"{name} received again: aborting the current trial" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    study = optuna.load_study(study_name="smoke", storage=url)
    assert account(study).failed == 1  # and nothing left RUNNING
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL]
    assert trials[0].user_attrs["fail_reason"] == f"worker interrupted ({name})"
    assert "accuracy" not in trials[0].user_attrs  # cut short: it never finished training


def test_with_prefetch_a_first_signal_fails_the_already_asked_trial_as_not_run(
        spawn_worker: Spawn, slow_spec: Path, sqlite_url: str) -> None:
    worker = spawn_worker("--spec", str(slow_spec), "--storage", sqlite_url, "--n-trials", "5",
                          "--prefetch", "--verbose", *FAST)
    worker.wait_for("trial 0 started", timeout=STARTUP)
    time.sleep(1.0)  # the background thread asks trial 1 while trial 0 trains
    worker.process.send_signal(signal.SIGTERM)
    result = worker.finish(timeout=120)
    assert result.returncode == 0, worker.output()
    assert result.stderr == "", worker.output()
    assert "prefetched trial(s) not run, FAILED" in result.stdout
    study = optuna.load_study(study_name="smoke", storage=sqlite_url)
    accounting = account(study)  # nothing left RUNNING
    assert (accounting.finished, accounting.failed) == (1, 1)
    trials = study.get_trials(deepcopy=False)
    assert "accuracy" in trials[0].user_attrs  # the running trial trained to the end
    assert trials[0].user_attrs["worker"]["prefetch"] is True  # its timing ran beside the prefetch
    assert trials[1].user_attrs["fail_reason"] == "not run: SIGTERM received before its turn"
