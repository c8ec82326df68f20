"""Where the worker's storage work per trial goes: SQL statements and commits, by call site.

    python benchmarks/bench_storage_calls.py --trials 100

The worker's default loop (benchmarks/sleep_worker.py, trials that sleep 0 s) on a fresh SQLite
file and a fresh Postgres database: first --trials trials timed with nothing attached (the loop's
overhead per trial), then --trials more with a SQLAlchemy listener that counts every statement and
commit and charges it to the product's function that called into Optuna (stack walk, so this pass
is not timed; on SQLite each transaction's BEGIN IMMEDIATE is a statement of its own). Both
passes follow 20 warm-up trials on the same study. Last, Optuna's floor: its own `study.optimize`
on a fresh study of the same storage settings (heartbeats on), the objective suggesting the same
parameters and writing nothing else. The counts say what a
shorter loop would have to remove; the duty-cycle benchmark says what it costs.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import optuna
from bench_duty_cycle import drop_postgres, fresh_postgres  # benchmarks/ is on sys.path
from sleep_worker import SPEC, run_loop
from sqlalchemy import event
from sqlalchemy.engine import Engine

from objective.optuna_objective import suggest
from studies.spec import load_spec
from studies.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
# studies/ is left out so that SQLite's BEGIN IMMEDIATE (studies/storage.py) counts for its caller,
# and so is the retrying storage, so that a call counts for whoever called the storage.
PRODUCT = tuple(str(ROOT / package) for package in ("search", "objective"))
PASS_THROUGH = (str(ROOT / "search" / "retry.py"), str(ROOT / "studies" / "optuna_internals.py"))
WARM_UP = 20


class Counter:
    """Statements and commits of every engine, charged to `product function -> Optuna call`."""

    def __init__(self) -> None:
        self.statements: collections.Counter[str] = collections.Counter()
        self.commits = 0

    def statement(self, *_: Any) -> None:
        self.statements[call_site()] += 1

    def commit(self, *_: Any) -> None:
        self.commits += 1

    def __enter__(self) -> Counter:
        event.listen(Engine, "before_cursor_execute", self.statement)
        event.listen(Engine, "commit", self.commit)
        return self

    def __exit__(self, *_: Any) -> None:
        event.remove(Engine, "before_cursor_execute", self.statement)
        event.remove(Engine, "commit", self.commit)


def call_site() -> str:
    """`objective.py:record -> set_user_attr`: the innermost product frame and what it called."""
    stack = traceback.extract_stack()
    for inner, outer in zip(reversed(stack[1:]), reversed(stack[:-1]), strict=True):
        if outer.filename.startswith(PRODUCT) and not outer.filename.startswith(PASS_THROUGH):
            return f"{Path(outer.filename).name}:{outer.name} -> {inner.name}"
    return "(outside the product)"


def measure(url: str, trials: int) -> tuple[float, Counter]:
    run_loop(url, "calls", 0.0, WARM_UP, None, sampler_seed=0)
    start = time.perf_counter()
    run_loop(url, "calls", 0.0, trials, None, sampler_seed=0)
    ms_per_trial = 1000 * (time.perf_counter() - start) / trials
    with Counter() as counter:
        run_loop(url, "calls", 0.0, trials, None, sampler_seed=0)
    return ms_per_trial, counter


def optuna_floor(url: str, trials: int) -> float:
    """Statements per trial of a bare `study.optimize` that only suggests the spec's parameters."""
    spec = load_spec(SPEC)
    study = optuna.create_study(storage=open_storage(url), study_name="floor",
                                sampler=spec.make_sampler(0))

    def suggest_only(trial: optuna.Trial) -> float:
        for name, distribution in spec.space.items():
            suggest(trial, name, distribution)
        return 1.0

    study.optimize(suggest_only, n_trials=WARM_UP)
    with Counter() as counter:
        study.optimize(suggest_only, n_trials=trials)
    return sum(counter.statements.values()) / trials


def report(storage: str, trials: int, ms_per_trial: float, counter: Counter) -> None:
    total = sum(counter.statements.values())
    print(f"\n{storage}: {ms_per_trial:.1f} ms per trial, {total / trials:.1f} statements and "
          f"{counter.commits / trials:.1f} commits per trial\n")
    print("| call site (product -> Optuna) | statements per trial |")
    print("|---|---|")
    for site, count in counter.statements.most_common():
        if count / trials >= 0.5:
            print(f"| `{site}` | {count / trials:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    print(f"{args.trials} trials of 0 s after {WARM_UP} warm-up, default loop, mnist_fast space, TPE, "
          f"{time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as scratch:
        report("SQLite (WAL)", args.trials, *measure(f"sqlite:///{scratch}/calls.db", args.trials))
        floor = {"SQLite (WAL)": optuna_floor(f"sqlite:///{scratch}/calls.db", args.trials)}
    name, url = fresh_postgres()
    try:
        report("PostgreSQL 15", args.trials, *measure(url, args.trials))
        floor["PostgreSQL 15"] = optuna_floor(url, args.trials)
    finally:
        drop_postgres(name)
    for storage, statements in floor.items():
        print(f"\nOptuna's own floor, {storage}: {statements:.1f} statements per trial "
              "(study.optimize, the same suggests, nothing else)")


if __name__ == "__main__":
    main()
