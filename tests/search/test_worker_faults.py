"""Fault injection with real worker processes on studies/smoke.toml: workers SIGKILLed mid-trial,
PostgreSQL stopped and started under running workers, a database that stays away past
--db-patience or is dropped, and trials that diverge or run out of memory. After each, the exact
accounting of the study: trial numbers 0..n-1 once each, nothing RUNNING or WAITING, the counts of
COMPLETE, PRUNED and FAILED, and every trial of a killed worker re-run (lost: 0).

The tests that stop PostgreSQL stop a cluster of their own (tests/postgres_cluster.py), so tests
running beside them on the shared server never notice; it is started again in a `finally`,
whatever happened.

Each test prints a one-line summary (run with -s to see it); docs/faults.md's fault table quotes them.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import secrets
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import optuna
import psycopg
import pytest
from optuna.trial import TrialState

from tests import postgres_cluster
from tests.conftest import ADMIN_URL
from tests.postgres_cluster import Cluster
from tests.search.workers import (
    FAST,
    FAST_HEARTBEAT,
    QUICK,
    SLOW,
    STARTUP,
    Spawn,
    WorkerProcess,
    account,
    budget,
    spec_file,
)

pytestmark = pytest.mark.slow  # real workers training on the real MNIST: ~2 minutes together

PASSWORD = "s3cret-" + secrets.token_hex(4)  # in every URL; trust auth ignores it, no output may show it
SLACK = 4.0  # seconds of scheduling noise on a loaded 2-core machine

def with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=url)


def assert_no_password(*workers: WorkerProcess) -> None:
    for worker in workers:
        assert PASSWORD not in worker.output(), worker.output()


# -- a PostgreSQL server to stop --------------------------------------------------------------


@pytest.fixture
def cluster() -> Iterator[tuple[str, Cluster]]:
    """A database in a PostgreSQL cluster of the test's own, and the cluster, to stop and start."""
    if reason := postgres_cluster.missing():
        pytest.skip(reason)
    with postgres_cluster.postgres_cluster("faults") as (url, own):
        yield url, own


# -- SIGKILL ------------------------------------------------------------------------------------


def running_trial_of(url: str, pid: int, timeout: float, other_than: int | None = None) -> int:
    """The number of the trial worker `pid` is running (other than `other_than`), once it runs one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError):  # no study yet
            for trial in load(url).get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if trial.user_attrs.get("worker", {}).get("pid") == pid and trial.number != other_than:
                    return trial.number
        time.sleep(0.1)
    raise AssertionError(f"worker {pid} ran no trial within {timeout} s")


def seconds_until_failed(url: str, killed_at: dict[int, datetime.datetime],
                         timeout: float) -> dict[int, float]:
    """For each trial number (with the wall-clock time of its worker's kill): seconds from the kill
    to the FAIL the stale check stored (its `datetime_complete`, written by a worker on this host)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = {t.number: t for t in load(url).get_trials(deepcopy=False, states=(TrialState.FAIL,))
                  if t.number in killed_at and t.datetime_complete is not None}
        if len(failed) == len(killed_at):
            return {n: (t.datetime_complete - killed_at[n]).total_seconds() for n, t in failed.items()}
        time.sleep(0.1)
    raise AssertionError(f"killed trials not FAILED within {timeout} s: {killed_at.keys() - failed.keys()}")


def wait_until_rerun(url: str, numbers: Iterable[int], timeout: float) -> None:
    """Until the re-run of each of trial `numbers` (its copy queued by the stale check) finishes."""
    deadline, waiting = time.monotonic() + timeout, set(numbers)
    while time.monotonic() < deadline:
        rerun = {t.system_attrs["retry_history"][-1] for t in load(url).get_trials(deepcopy=False)
                 if t.state.is_finished() and t.system_attrs.get("retry_history")}
        if waiting <= rerun:
            return
        time.sleep(0.2)
    raise AssertionError(f"trials not re-run within {timeout} s: {waiting - rerun}")


def test_sigkill_mid_trial_several_times(spawn_worker: Spawn, postgres_url: str, tmp_path: Path) -> None:
    """Three workers; three times over the run one of them is SIGKILLed in the middle of a trial and a
    new one started in its place (as `restart: on-failure` does). Each killed trial turns FAILED
    within the grace period (+ one heartbeat interval) and is re-run; the others carry on until every
    re-run has finished, then stop at a SIGTERM. Only a worker in its trial loop checks heartbeats
    (one still timing its yardstick does not), so each kill waits until some other worker is there:
    the originals for the first two kills, the first replacement for the last."""
    kills = 3
    url = with_password(postgres_url)
    args = ["--spec", str(spec_file(tmp_path, **QUICK)), "--storage", url, *FAST, *FAST_HEARTBEAT]
    workers = [spawn_worker(*args) for _ in range(3)]
    for worker in workers:
        running_trial_of(postgres_url, worker.pid, timeout=STARTUP)
    killed: dict[int, datetime.datetime] = {}  # trial number -> when its worker was killed
    for victim in workers[:kills]:
        if victim is workers[kills - 1]:
            running_trial_of(postgres_url, workers[kills].pid, timeout=STARTUP)
        # A trial caught just as it starts, so its warm-up and first seed still lie ahead; a one-seed
        # smoke trial can still end before the kill lands, and then the victim's next one (asked at
        # once) is the trial it dies in: whichever it left RUNNING is the killed trial.
        current = running_trial_of(postgres_url, victim.pid, timeout=STARTUP)
        running_trial_of(postgres_url, victim.pid, timeout=STARTUP, other_than=current)
        time.sleep(0.1)  # into the training
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        at = datetime.datetime.now()
        left = [t.number for t in load(postgres_url).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                if t.user_attrs.get("worker", {}).get("pid") == victim.pid]
        assert len(left) == 1, f"worker {victim.pid} was killed between trials (left RUNNING: {left})"
        killed[left[0]] = at
        workers.append(spawn_worker(*args))
    failed_after = seconds_until_failed(postgres_url, killed, timeout=60)
    wait_until_rerun(postgres_url, killed, timeout=120)
    survivors = workers[kills:]
    for worker in survivors:
        worker.process.send_signal(signal.SIGTERM)
    for worker in survivors:
        result = worker.finish(timeout=120)
        assert result.returncode == 0, worker.output()
        assert "stopped: SIGTERM received" in result.stdout
    assert [w.finish(timeout=5).returncode for w in workers[:kills]] == [-signal.SIGKILL] * kills
    assert_no_password(*workers)

    study = load(postgres_url)
    accounting = account(study)
    assert accounting.failed == kills and set(accounting.retries) == set(killed)
    assert accounting.lost == []
    trials = study.get_trials(deepcopy=False)
    for number, retry in accounting.retries.items():
        assert trials[number].state == TrialState.FAIL and "fail_reason" not in trials[number].user_attrs
        assert trials[retry].params == trials[number].params
    # FAILED by the heartbeat check: within the grace period plus one interval of the last beat.
    assert max(failed_after.values()) <= 3 + 1 + SLACK, failed_after
    print(f"\nSIGKILL: faults injected: {kills} SIGKILL mid-trial; {accounting.line()}; killed trials "
          f"FAILED {min(failed_after.values()):.1f}-{max(failed_after.values()):.1f} s after the kill "
          "(grace 3 s, heartbeat 1 s)")


# -- PostgreSQL restarts ------------------------------------------------------------------------


def test_workers_ride_out_a_postgres_restart(spawn_worker: Spawn, cluster: tuple[str, Cluster],
                                             tmp_path: Path) -> None:
    """Three workers; PostgreSQL is stopped for 4 s in the middle of the run and started again. Each
    storage call that meets the outage waits with a log line and retries; every worker finishes, no
    trial fails, none is left RUNNING."""
    postgres_url, server = cluster
    n_trials = 12
    url = with_password(postgres_url)
    args = ["--spec", str(spec_file(tmp_path, **budget(n_trials))), "--storage", url, *FAST,
            "--heartbeat-interval", "1", "--grace-period", "20", "--db-patience", "60"]
    workers = [spawn_worker(*args) for _ in range(3)]
    for worker in workers:  # past the first trial (its warm-up is long): trials of a second or two
        worker.wait_for(" COMPLETE ", timeout=STARTUP)
    with server.stopped():
        time.sleep(4.0)
    results = [worker.finish(timeout=240) for worker in workers]
    assert [r.returncode for r in results] == [0, 0, 0], [w.output() for w in workers]
    assert all(r.stderr == "" for r in results), [r.stderr for r in results]
    assert_no_password(*workers)
    # The workers met the outage in storage calls of their loops (with trials of a second or two in
    # an outage of about 6 s, each of them normally does), waited with a log line and went on.
    waits = [line for r in results for line in r.stdout.splitlines() if "database unreachable" in line]
    assert waits, [w.output() for w in workers]
    pattern = r"retrying in [\d.]+ s \(attempt \d+/\d+, giving up after --db-patience 60 s\)"
    assert all(re.search(pattern, line) for line in waits), waits

    accounting = account(load(postgres_url))
    assert accounting.failed == 0 and accounting.lost == []
    assert n_trials <= accounting.finished <= n_trials + 2
    print(f"\nrestart: faults injected: PostgreSQL stopped 4 s (+ its restart) under 3 workers; {len(waits)} "
          f"waits logged and retried; {accounting.line()}; the first wait: {waits[0]}")


def test_a_database_away_past_the_patience(spawn_worker: Spawn, cluster: tuple[str, Cluster],
                                           tmp_path: Path) -> None:
    """The worker exits 1 with one line once --db-patience has passed; its trial stays RUNNING while
    nobody can write, and the next worker started after the database is back fails it (stale
    heartbeat) and re-runs its parameters."""
    postgres_url, server = cluster
    url = with_password(postgres_url)
    # SLOW: the server stops while the trial trains.
    args = ["--spec", str(spec_file(tmp_path, **SLOW)),
            "--storage", url, *FAST, *FAST_HEARTBEAT]
    worker = spawn_worker(*args, "--db-patience", "4", "--verbose")
    worker.wait_for("trial 0 started", timeout=STARTUP)
    with server.stopped():
        result = worker.finish(timeout=120)
    assert result.returncode == 1, worker.output()
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(r"error: the database stayed unreachable for 4 s \(\d+ attempts; last, during \w+: "
                        r".+\); gave up after --db-patience 4 s: trial 0 stays RUNNING until its heartbeat "
                        r"is 3 s old, then the next worker to look marks it FAILED and queues a retry",
                        lines[0]), lines[0]
    assert "database unreachable" in result.stdout and "Traceback" not in worker.output()
    assert [t.state for t in load(postgres_url).get_trials()] == [TrialState.RUNNING]

    time.sleep(3 + 1)  # past the grace period (the last beat was before the server stopped)
    fresh = spawn_worker(*args, "--n-trials", "1")
    assert fresh.finish(timeout=180).returncode == 0, fresh.output()
    assert_no_password(worker, fresh)
    accounting = account(load(postgres_url))
    assert (accounting.failed, accounting.retries, accounting.lost) == (1, {0: 1}, [])
    assert accounting.finished == 1
    print(f"\npatience: faults injected: PostgreSQL down past --db-patience 4 s; worker exit 1; "
          f"{accounting.line()} (trial 0 FAILED by the next worker, re-run as trial 1)")


def test_a_dropped_database_ends_the_worker_with_exit_1(spawn_worker: Spawn, postgres_url: str,
                                                        tmp_path: Path) -> None:
    """Not an outage that passes: the worker retries for --db-patience, then exits 1 with one line
    that quotes the database (not Optuna's generic wrapper message)."""
    spec = spec_file(tmp_path, **SLOW)
    worker = spawn_worker("--spec", str(spec), "--storage", postgres_url, "--verbose", "--db-patience", "2",
                          *FAST)
    worker.wait_for("trial 0 started", timeout=STARTUP)
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    result = worker.finish(timeout=120)
    assert result.returncode == 1, worker.output()
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the database stayed unreachable for 2 s"), lines[0]
    assert f'database "{database}" does not exist' in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


# -- training faults ----------------------------------------------------------------------------


def test_divergence_and_out_of_memory_fail_only_their_trial(spawn_worker: Spawn, sqlite_url: str,
                                                           tmp_path: Path) -> None:
    """A random search over lr in {0.01, 1e30} and conv1_width in {8, 100000}, batches of all 2,000
    training images: lr=1e30 diverges (NaN/inf loss: a COMPLETE, infeasible trial with the reason),
    a width of 100,000 asks for terabytes (DefaultCPUAllocator fails at once: a FAILED trial with
    the reason). The worker goes on to the next trial after either."""
    spec = spec_file(tmp_path, **{
        "train_subset = 6000\nepochs = 1.0": "train_subset = 2000\nepochs = 3.0\nbatch_size = 60000\n"
                                              "conv1_width = 8",
        'name = "tpe"': 'name = "random"',
        "[params.lr]\ntype = \"float\"\nlow = 0.003\nhigh = 0.03\nlog = true":
            "[params.lr]\ntype = \"categorical\"\nchoices = [0.01, 1e30]",
        "[params.batch_size]\ntype = \"categorical\"\nchoices = [128, 256]\n\n": "",
        "[params.conv1_width]\ntype = \"int\"\nlow = 8\nhigh = 24\nstep = 8":
            "[params.conv1_width]\ntype = \"categorical\"\nchoices = [8, 100000]"})
    worker = spawn_worker("--spec", str(spec), "--storage", sqlite_url, "--n-trials", "8",
                          "--sampler-seed", "3", *FAST)
    result = worker.finish(timeout=240)
    assert result.returncode == 0, worker.output()
    assert "stopped: ran --n-trials 8" in result.stdout and result.stderr == ""

    study = load(sqlite_url)
    accounting = account(study)
    trials = study.get_trials(deepcopy=False)
    oom = [t for t in trials if t.params["conv1_width"] == 100000]
    diverged = [t for t in trials if t.params["conv1_width"] == 8 and t.params["lr"] == 1e30]
    fine = [t for t in trials if t.params["conv1_width"] == 8 and t.params["lr"] == 0.01]
    assert oom and diverged and fine, [t.params for t in trials]
    for trial in oom:
        assert trial.state == TrialState.FAIL
        assert "DefaultCPUAllocator: can't allocate memory" in trial.user_attrs["fail_reason"]
    for trial in diverged:
        assert trial.state == TrialState.COMPLETE
        assert trial.user_attrs["stopped"].startswith("diverged on seed")
        # Infeasible, and penalized for it: past the recipe's ratio of 1, by at most one point's
        # penalty (the value is a ratio to the yardstick, not seconds: objective/optuna_objective.py).
        assert trial.constraints["accuracy_points_short"] > 0
        assert 1.0 < trial.value <= max(trial.user_attrs["vs_baseline"], 1.0) + 1.0
    assert all(t.state == TrialState.COMPLETE for t in fine)
    assert not any(t.user_attrs["stopped"].startswith("diverged") for t in fine)
    assert accounting.failed == len(oom) and accounting.retries == {}  # a failing config is not re-queued
    print(f"\ntraining faults: {len(oom)} out-of-memory, {len(diverged)} divergent in 8 trials; "
          f"{accounting.line()}")
