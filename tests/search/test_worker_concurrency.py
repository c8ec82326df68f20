"""Several real worker processes on one study at once: every trial is accounted for exactly.

The invariant, for W workers started together with --n-trials K on a fresh storage: the study holds
exactly W*K trials, numbered 0..W*K-1 without gaps or duplicates, all finished (COMPLETE or PRUNED:
none RUNNING, WAITING or FAILED), each worker ran exactly K of them (by the pid in the `worker`
user attr), and exactly one is the enqueued baseline (the seed recipe's params). The baseline is
not extra: whichever worker asks first after the study was created runs it as one of its K.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.device_lock import cores_label
from studies.spec import load_spec
from tests.search.workers import FAST, QUICK, SMOKE, Spawn, WorkerProcess, account, budget, spec_file

WORKERS = 3
PER_WORKER = 2  # trials each: enough to interleave three workers


def assert_exact_accounting(study: optuna.Study, workers: list[WorkerProcess]) -> None:
    trials = study.get_trials(deepcopy=False)
    accounting = account(study)  # numbers 0..n-1 once each, nothing RUNNING or WAITING
    assert (accounting.finished, accounting.failed) == (WORKERS * PER_WORKER, 0), \
        [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    per_worker = collections.Counter(t.user_attrs["worker"]["pid"] for t in trials)
    assert per_worker == {worker.pid: PER_WORKER for worker in workers}
    baselines = [t for t in trials if t.user_attrs.get("baseline")]
    assert len(baselines) == 1
    assert baselines[0].params == load_spec(SMOKE).baseline_params()


def run_together(spawn_worker: Spawn, args: list[str], folder: Path, cwd: Path | None = None
                 ) -> list[WorkerProcess]:
    extra = {"cwd": cwd} if cwd else {}
    spec = spec_file(folder, **QUICK)
    workers = [spawn_worker("--spec", str(spec), "--n-trials", str(PER_WORKER), *FAST, *args, **extra)
               for _ in range(WORKERS)]
    for worker in workers:
        result = worker.finish(timeout=180)
        assert result.returncode == 0, worker.output()
        assert result.stderr == "", worker.output()  # the worker's lines go to stdout, nothing else
        assert result.stdout.count(" trial ") >= PER_WORKER, worker.output()
        assert f"stopped: ran --n-trials {PER_WORKER}" in result.stdout
    return workers


def test_three_workers_on_a_fresh_postgres_database(spawn_worker: Spawn, postgres_url: str,
                                                    tmp_path: Path) -> None:
    workers = run_together(spawn_worker, ["--storage", postgres_url], tmp_path)
    study = optuna.load_study(study_name="smoke", storage=postgres_url)
    assert_exact_accounting(study, workers)
    # One torch thread each, on a lease of every core shared with the others (FAST's --share-device),
    # and the trials' fingerprints say so.
    fingerprints = {(t.user_attrs["fingerprint"]["threads"], t.user_attrs["fingerprint"]["cores"])
                    for t in study.get_trials(deepcopy=False)}
    assert fingerprints == {(1, len(os.sched_getaffinity(0)))}


def test_three_workers_on_the_default_sqlite_file(spawn_worker: Spawn, tmp_path: Path) -> None:
    """No --storage and no $OPTUNA_STORAGE: the study lands in ./optuna.db of the working folder."""
    workers = run_together(spawn_worker, [], tmp_path, cwd=tmp_path)
    assert all("sqlite:///optuna.db" in worker.finish(timeout=1).stdout for worker in workers)
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert_exact_accounting(study, workers)


def test_a_worker_stops_at_the_study_budget(spawn_worker: Spawn, sqlite_url: str,
                                            tmp_path: Path) -> None:
    """[study] n_trials is the whole study's budget: a worker with no --n-trials stops there."""
    n_trials = 2
    spec = spec_file(tmp_path, **budget(n_trials), **QUICK)
    result = spawn_worker("--spec", str(spec), "--storage", sqlite_url, *FAST).finish(timeout=120)
    assert result.returncode == 0, result
    assert f"budget is reached ({n_trials} of {n_trials} trials finished)" in result.stdout
    study = optuna.load_study(study_name="smoke", storage=sqlite_url)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == n_trials


def test_cpu_workers_without_flags_take_turns_on_the_cores(spawn_worker: Spawn, sqlite_url: str,
                                                           tmp_path: Path) -> None:
    """Two CPU workers started with no --threads: each leases every core, so the second waits for
    the first instead of running beside it. No two trials that ran at once used more torch threads
    together than the host has cores."""
    args = ["--spec", str(spec_file(tmp_path, **QUICK)), "--storage", sqlite_url, "--n-trials", "1",
            "--device", "cpu", "--no-progress"]
    host_cores = sorted(os.sched_getaffinity(0))
    cores = len(host_cores)
    workers = [spawn_worker(*args) for _ in range(2)]
    for worker in workers:
        assert worker.finish(timeout=180).returncode == 0, worker.output()
    outputs = [worker.finish(timeout=1).stdout for worker in workers]
    assert all(f"{cores_label(host_cores)} held by this worker alone" in out for out in outputs), outputs
    assert any("wanted, fewer are free" in out for out in outputs), outputs  # one waited for the other
    trials = optuna.load_study(study_name="smoke", storage=sqlite_url).get_trials(deepcopy=False)
    assert len(trials) == 2
    for trial in trials:
        assert (trial.user_attrs["fingerprint"]["threads"], trial.user_attrs["fingerprint"]["cores"]) == \
            (cores, cores)
    a, b = trials
    overlap = a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
    assert not overlap, [(t.number, t.datetime_start, t.datetime_complete) for t in trials]
