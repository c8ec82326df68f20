"""Where a trial's service time goes, against the study's size: the worker's own steps, one by one.

    python benchmarks/bench_service_cost.py [--sizes 100,1000,4000] [--trials 30]
        [--storage journal,postgres,memory] [--history none,200]

For each storage (a fresh PostgreSQL database as the worker opens it: `journal`, the
`postgresql+journal://` log of studies/journal.py, or `postgres`, Optuna's RDBStorage through the
worker's retrying storage; or Optuna's in-memory storage), each sampler (TPE over the whole study,
or over a bounded history: studies/sampler.py) and each size, the study of studies/mnist_fast.toml
is filled up to that many finished trials (copied from a simulated search, so they look like a
real study's: the same space, values, constraints and attributes), then --trials more trials run
through the worker's own steps (search/loop.py) with a zero-second simulated run, each step timed
in wall and CPU seconds (this process; the database server's CPU is not in it):
- ask: `study.ask()` (a waiting trial first), the first heartbeat, the `worker` attribute;
- sample + suggest: `objective.plan`: the sampler and the 13 suggests, the `config` attribute and
  the best value read;
- record: the result's attributes and constraints (`objective.record`);
- tell: `study.tell`; budget: the finished-trial count; told: the best trial and the log line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_duty_cycle import drop_postgres, fresh_postgres  # noqa: E402

from objective.config import TrainConfig  # noqa: E402
from objective.optuna_objective import Objective  # noqa: E402
from objective.result import RunResult  # noqa: E402
from search import loop  # noqa: E402
from search import session as worker_session  # noqa: E402
from search import worker as search_worker  # noqa: E402
from search.heartbeat import Heartbeat  # noqa: E402
from search.progress import best_trial, trial_line  # noqa: E402
from search.retry import Retry, RetryingStorage  # noqa: E402
from search.signals import GracefulStop  # noqa: E402
from studies.journal import batched  # noqa: E402
from studies.optuna_internals import set_constraints  # noqa: E402
from studies.spec import load_spec  # noqa: E402
from studies.storage import create_or_load, open_journal, open_storage  # noqa: E402

SPEC = ROOT / "studies" / "mnist_fast.toml"
WARM_UP = 5
PHASES = ("ask", "sample + suggest", "record", "tell", "budget", "told")


def simulated_trials(count: int) -> list[optuna.trial.FrozenTrial]:
    """The finished trials of a fast-forward search of 4 simulated h100 workers, `count` or more."""
    from search.clock import VirtualClock
    from search.fleet import run_on_virtual_clock

    text = (
        SPEC.read_text()
        .replace("minutes = 14 ", "minutes = 10000 ")
        .replace("n_trials = 1000", f"n_trials = {count}")

    )
    spec_path = Path("/tmp") / f"service-cost-{count}.toml"
    spec_path.write_text(text)
    args = search_worker.parser().parse_args(
        [
            "--spec",
            str(spec_path),
            "--simulate",
            "h100",
            "--fast-forward",
            "--workers",
            "4",
            "--sampler-seed",
            "0",
            "--no-progress",
        ]
    )
    storage = optuna.storages.InMemoryStorage()
    clock, stop = VirtualClock(), GracefulStop()
    run_on_virtual_clock(
        4,
        clock,
        lambda index: worker_session.search(
            worker_session.open_worker(args, stop, clock, storage, index), args, stop
        ),
    )
    study = optuna.load_study(study_name="mnist_fast", storage=storage)
    return [t for t in study.get_trials() if t.state.is_finished()]


class ZeroRun:
    """A run of zero seconds at the bar: every trial is feasible and completes after one seed."""

    def __call__(self, config: TrainConfig, time_limit: float) -> RunResult:
        return RunResult(
            seed=config.seed,
            accuracy=0.9925,
            holdout_accuracy=0.9925,
            seconds=0.25,
            train_seconds=0.2,
            steps=235,
            diverged=False,
            over_time=False,
            fingerprint={"device": "simulated h100"},
        )


def measure(study: optuna.Study, storage: Any, trials: int) -> dict[str, tuple[float, float]]:
    spec = load_spec(SPEC)
    settings = dataclasses.replace(spec.objective, repeats=1, crown_seeds=1)
    objective = Objective(spec.space, spec.base, settings, ZeroRun(), set_constraints=set_constraints)
    objective.measure_baseline()
    heartbeat = Heartbeat(study, storage, grace_period=20)
    attrs = {
        "worker": {
            "host": "bench",
            "pid": 1,
            "device": "simulated h100",
            "shared_device": True,
            "prefetch": True,
        }
    }
    stops = loop.Stops(GracefulStop(), budget=10**9)
    wall: dict[str, list[float]] = {phase: [] for phase in PHASES}
    cpu: dict[str, list[float]] = {phase: [] for phase in PHASES}

    def timed(phase: str, step: Callable[[], Any]) -> Any:
        w, c = time.perf_counter(), time.process_time()
        out = step()
        wall[phase].append(time.perf_counter() - w)
        cpu[phase].append(time.process_time() - c)
        return out

    for index in range(trials + WARM_UP):
        trial = timed("ask", lambda: _ask(study, heartbeat, attrs))
        begun = timed("sample + suggest", lambda t=trial: _plan(objective, t))
        ending = loop.train(objective, begun)
        assert ending.trained is not None
        value = timed("record", lambda t=trial, e=ending: objective.record(t, e.trained))
        told = timed(
            "tell", lambda t=trial, v=value: loop.tell(study, t, v, TrialState.COMPLETE, None, heartbeat)
        )
        timed("budget", lambda: stops.budget_reason(study))
        timed("told", lambda t=told: trial_line(t, best_trial(study)))
        if index < WARM_UP:  # the enqueued baseline and start points, and the caches fill
            for phase in PHASES:
                wall[phase].pop()
                cpu[phase].pop()
    heartbeat.close()
    return {
        phase: (1000 * statistics.median(wall[phase]), 1000 * statistics.median(cpu[phase]))
        for phase in PHASES
    }


def _plan(objective: Objective, trial: optuna.Trial) -> loop.Begun:
    with batched(trial.storage):  # as search/loop.py's begin
        return loop.Begun(trial, objective.plan(trial))


def _ask(study: optuna.Study, heartbeat: Heartbeat, attrs: dict[str, Any]) -> optuna.Trial:
    trial = study.ask()
    heartbeat.add(trial)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return trial


def open_bench_storage(kind: str, url: str | None) -> tuple[str | None, Any]:
    """The URL a worker is given for `kind` (journal, postgres, memory) on the database at `url`,
    and a storage on it opened as the worker opens it."""
    if kind == "journal" and url:
        url = url.replace("postgresql+psycopg://", "postgresql+journal://")
        return url, open_journal(url, heartbeat=False)
    if kind == "postgres" and url:
        return url, RetryingStorage(open_storage(url), Retry())
    return None, optuna.storages.InMemoryStorage()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,1000,4000")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--storage", default="journal,postgres,memory")
    parser.add_argument("--history", default="none,200")
    args = parser.parse_args()
    worker_session.quiet_optuna()
    logging.getLogger("search").setLevel(logging.WARNING)
    sizes = [int(size) for size in args.sizes.split(",")]
    source = simulated_trials(max(sizes))
    print(
        f"{time.strftime('%Y-%m-%d')}, ms per trial (wall / CPU of this process), medians of {args.trials} "
        f"trials; the study filled from a simulated search of {len(source)} trials\n"
    )
    print("| storage | sampler | trials in the study | " + " | ".join(PHASES) + " | total wall | total CPU |")
    print("|---|---|---|" + "---|" * (len(PHASES) + 2))
    for kind in args.storage.split(","):
        name, url = fresh_postgres() if kind in ("journal", "postgres") else (None, None)
        _, storage = open_bench_storage(kind, url)
        spec = load_spec(SPEC)
        study, _ = create_or_load(spec, storage, sampler_seed=1, study_name="cost")
        try:
            for size in sizes:
                have = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
                study.add_trials(source[have:size])
                for history in args.history.split(","):
                    bounded = dataclasses.replace(spec, history=None if history == "none" else int(history))
                    sampled = optuna.load_study(
                        study_name="cost", storage=storage, sampler=bounded.make_sampler(1)
                    )
                    phases = measure(sampled, storage, args.trials)
                    cells = " | ".join(f"{w:.1f} / {c:.1f}" for w, c in phases.values())
                    total_wall = sum(w for w, _ in phases.values())
                    total_cpu = sum(c for _, c in phases.values())
                    sampler = "TPE" if history == "none" else f"TPE, history {history}"
                    print(
                        f"| {kind} | {sampler} | {size} | {cells} | {total_wall:.1f} | {total_cpu:.1f} |",
                        flush=True,
                    )
        finally:
            if kind == "journal":
                storage.journal.close()
            elif kind == "postgres":
                storage.remove_session()
            if name is not None:
                drop_postgres(name)


if __name__ == "__main__":
    main()
