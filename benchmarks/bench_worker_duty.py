"""The real worker's duty cycle: the share of its searching wall time spent inside timed training.

    python benchmarks/bench_worker_duty.py --trials 150 [--checkout DIR ...]

`python -m search.worker` with default flags (CPU, torch's threads) runs --trials trials of
studies/smoke.toml (~0.3 s each on a 2-core CPU) on a fresh SQLite file and a fresh Postgres
database. Duty cycle = the timed seconds of its trials (every seed) / the searching wall time the
worker reports in its closing line ("ran N trial(s) in X s": from its first stale check to its
last tell; the start-up, data load and yardstick come before). Also the trials' median seconds,
so a loop that slows the timed run beside it shows. Each --checkout (another clone of the
project, e.g. an older commit) runs the same, interleaved with this one.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from bench_duty_cycle import drop_postgres, fresh_postgres  # benchmarks/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
SEARCH_LINE = re.compile(r"this worker ran (\d+) trial\(s\) in ([0-9.]+) s")


def run_worker(checkout: Path, url: str, trials: int, data_dir: str) -> tuple[float, float, float]:
    """(duty cycle, searching seconds, median trial seconds) of one worker run."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    env.pop("OPTUNA_STORAGE", None)
    done = subprocess.run([sys.executable, "-m", "search.worker", "--spec", "studies/smoke.toml",
                           "--storage", url, "--n-trials", str(trials), "--device", "cpu",
                           "--data-dir", data_dir, "--no-progress"],
                          cwd=checkout, env=env, capture_output=True, text=True, check=False)
    match = SEARCH_LINE.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"worker in {checkout} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    searching = float(match.group(2))
    study = optuna.load_study(study_name="smoke", storage=url)
    seconds = [sum(t.user_attrs.get("seconds_per_seed", [])) for t in study.trials]
    medians = [t.user_attrs["seconds"] for t in study.trials if "seconds" in t.user_attrs]
    return sum(seconds) / searching, searching, statistics.median(medians)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--checkout", action="append", default=[], type=Path,
                        help="another clone to run as well (default: only this one)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat, in alternating order")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "mnist"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{args.trials} trials of studies/smoke.toml, one worker, default flags, CPU, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print("| checkout | storage | searching s | duty cycle | overhead ms/trial | median trial s |")
    print("|---|---|---|---|---|---|")
    checkouts = [ROOT, *args.checkout]
    for round_ in range(args.rounds):
        # Each round reverses the order, so a host that speeds up or slows down favours no one.
        for checkout in checkouts if round_ % 2 == 0 else checkouts[::-1]:
            for storage in ("SQLite (WAL)", "PostgreSQL"):
                duty, searching, median = measure(checkout, storage, args.trials, args.data_dir)
                overhead = 1000 * searching * (1 - duty) / args.trials
                print(f"| {checkout.name} | {storage} | {searching:.1f} | {100 * duty:.1f} % | "
                      f"{overhead:.0f} | {median:.3f} |", flush=True)


def measure(checkout: Path, storage: str, trials: int, data_dir: str) -> tuple[float, float, float]:
    """`run_worker` on a fresh database of `storage`."""
    if storage.startswith("SQLite"):
        with tempfile.TemporaryDirectory() as scratch:
            return run_worker(checkout, f"sqlite:///{scratch}/duty.db", trials, data_dir)
    name, url = fresh_postgres()
    try:
        return run_worker(checkout, url, trials, data_dir)
    finally:
        drop_postgres(name)

if __name__ == "__main__":
    main()
