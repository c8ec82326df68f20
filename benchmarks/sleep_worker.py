"""The worker's real trial loop with a benchmark-only objective of fixed length.

Everything but the training is the product's: the spec's search space and sampler, the storage
settings, ask, suggest, the heartbeat, the user attributes and constraint, tell, the budget check
and the per-trial log line. Each trial either sleeps (`SleepTrain`) or trains the seed recipe
whatever the sampler suggested (`RecipeTrain`), so what is left of the wall time is the service's
overhead, and the recipe's seconds show what the service's work does to a timed run beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

from objective.config import TrainConfig
from objective.optuna_objective import Objective
from objective.result import RunResult
from objective.trainer_process import TrainingProcess
from search import session as worker_session
from search.device_lock import Claim
from search.devices import Device
from search.retry import Retry, RetryingStorage
from search.signals import GracefulStop
from studies.liveness import GRACE_PERIOD
from studies.optuna_internals import set_constraints
from studies.spec import load_spec
from studies.storage import create_or_load, open_storage

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "studies" / "mnist_fast.toml"


class SleepTrain:
    """Stands in for `train_once`: sleeps `seconds` and counts the time spent "training"."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.trained = 0.0
        self.runs = 0

    def __call__(self, config: TrainConfig, time_limit: float) -> RunResult:
        start = time.perf_counter()
        time.sleep(self.seconds)
        elapsed = time.perf_counter() - start
        self.trained += elapsed
        self.runs += 1
        return RunResult(seed=config.seed, accuracy=0.995, holdout_accuracy=0.995, seconds=elapsed,
                         train_seconds=elapsed, steps=1, diverged=False, over_time=False,
                         fingerprint={"device": "sleep", "device_type": "cpu", "torch": "-", "threads": 1})


class RecipeTrain:
    """Stands in for `train_once`: trains the seed recipe (`base`) on the suggested seed only, in
    a training process on the CPU, as the worker does."""

    def __init__(self, base: TrainConfig, data_dir: str) -> None:
        self.base = base
        self.results: list[RunResult] = []
        self.process = TrainingProcess()
        self.process.load("cpu", None, (), data_dir)

    @property
    def trained(self) -> float:
        return sum(result.seconds for result in self.results)

    @property
    def runs(self) -> int:
        return len(self.results)

    def __call__(self, config: TrainConfig, time_limit: float) -> RunResult:
        self.results.append(self.process.run(self.base.replace(seed=config.seed), time_limit))
        return self.results[-1]


def run_loop(url: str, study_name: str, trial_seconds: float, n_trials: int | None,
             timeout: float | None, sampler_seed: int, prefetch: bool = False,
             data_dir: str | None = None) -> tuple[SleepTrain | RecipeTrain, int, float]:
    """Run the worker's loop; returns (the stand-in, trials this worker ran, loop wall seconds).
    With `data_dir`, each trial trains the seed recipe instead of sleeping."""
    spec = load_spec(SPEC)
    # One run per trial (a trial of fixed length), and the loop stops on n_trials/timeout only.
    settings = dataclasses.replace(spec.objective, repeats=1, crown_seeds=1)
    spec = dataclasses.replace(spec, n_trials=10**9, objective=settings)
    storage = RetryingStorage(open_storage(url), Retry())
    study, _ = create_or_load(spec, storage, sampler_seed=sampler_seed, study_name=study_name)
    sleeper = SleepTrain(trial_seconds) if data_dir is None else RecipeTrain(TrainConfig(), data_dir)
    objective = Objective(spec.space, spec.base, spec.objective, sleeper, set_constraints=set_constraints)
    device = Device(sleeper, Claim("sleep", shared=True, handles=[]), "sleep", {}, simulated=True)
    worker = worker_session.Worker(spec, study, storage, objective, device, {"worker": {"pid": 0}},
                                  prefetch=prefetch, grace_period=GRACE_PERIOD)
    args = argparse.Namespace(n_trials=n_trials, timeout=timeout, no_progress=True, db_patience=120)
    logging.getLogger("search").setLevel(logging.WARNING)  # no per-trial lines on the console
    worker_session.quiet_optuna()
    start = time.perf_counter()
    worker_session.search(worker, args, GracefulStop())
    return sleeper, sleeper.runs, time.perf_counter() - start
