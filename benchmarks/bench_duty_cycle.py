"""Worker duty cycle: the fraction of a worker's wall time spent inside (timed) training.

    python benchmarks/bench_duty_cycle.py --trials 1000 --trial-seconds 0.2

One worker runs the real trial loop (benchmarks/sleep_worker.py) on the mission's 10-parameter
space with Optuna 5's default TPE, against a fresh SQLite file and a fresh Postgres database, and
each trial "trains" by sleeping --trial-seconds; once as by default (the storage work between two
trials) and once with --prefetch (on a background thread while the trial trains).
Duty cycle = time asleep / loop wall time; overhead per trial = (wall - asleep) / trials,
reported for the first and last 100 trials too, since the sampler's cost grows with the study.

Then --recipe-trials trials (SQLite, each mode) train the seed recipe on real MNIST instead of
sleeping, to show what the background thread of --prefetch does to a timed run beside it (CPU and
Python's GIL): the median of the recipe's timed seconds in each mode, and the duty cycle.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import psycopg
from sleep_worker import RecipeTrain, run_loop  # benchmarks/ is on sys.path when run as a script

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def fresh_postgres() -> tuple[str, str]:
    name = f"fms_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_postgres(name: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure(url: str, trials: int, trial_seconds: float, prefetch: bool) -> list[str]:
    row = []
    for size in (100, trials - 200, 100):
        # The loop runs in three parts on one study so the early and late overheads show apart.
        sleeper, ran, wall = run_loop(url, "duty", trial_seconds, size, None, sampler_seed=0,
                                      prefetch=prefetch)
        row.append((sleeper.trained, ran, wall))
    asleep = sum(part[0] for part in row)
    wall = sum(part[2] for part in row)
    ran = sum(part[1] for part in row)
    first, last = row[0], row[2]
    return [f"{ran}", f"{100 * asleep / wall:.1f} %", f"{1000 * (wall - asleep) / ran:.1f}",
            f"{1000 * (first[2] - first[0]) / first[1]:.1f}", f"{1000 * (last[2] - last[0]) / last[1]:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--trial-seconds", type=float, default=0.2)
    parser.add_argument("--recipe-trials", type=int, default=10)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "mnist"))
    args = parser.parse_args()
    assert args.trials > 200, "at least 200 trials: the first and last 100 are reported apart"
    print(f"{args.trials} trials of {args.trial_seconds} s, mnist_fast space, TPE (Optuna 5 defaults), "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| storage | worker loop | trials | duty cycle | overhead ms/trial | first 100 | last 100 |")
    print("|---|---|---|---|---|---|---|")
    for prefetch in (False, True):
        loop = "--prefetch" if prefetch else "default"
        with tempfile.TemporaryDirectory() as scratch:
            cells = measure(f"sqlite:///{scratch}/duty.db", args.trials, args.trial_seconds, prefetch)
            print(f"| SQLite (WAL) | {loop} | " + " | ".join(cells) + " |", flush=True)
        name, url = fresh_postgres()
        try:
            cells = measure(url, args.trials, args.trial_seconds, prefetch)
            print(f"| PostgreSQL 15 | {loop} | " + " | ".join(cells) + " |", flush=True)
        finally:
            drop_postgres(name)
    if args.recipe_trials:
        recipe_table(args.recipe_trials, args.data_dir)


def recipe_table(trials: int, data_dir: str) -> None:
    print(f"\n{trials} trials training the seed recipe (CPU, in a training process), SQLite\n")
    print("| worker loop | trials | median recipe s | duty cycle |")
    print("|---|---|---|---|")
    for prefetch in (False, True):
        with tempfile.TemporaryDirectory() as scratch:
            recipe, ran, wall = run_loop(f"sqlite:///{scratch}/recipe.db", "recipe", 0.0, trials, None,
                                         sampler_seed=0, prefetch=prefetch, data_dir=data_dir)
        assert isinstance(recipe, RecipeTrain)
        median = statistics.median(result.seconds for result in recipe.results)
        print(f"| {'--prefetch' if prefetch else 'default'} | {ran} | {median:.3f} | "
              f"{100 * recipe.trained / wall:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
