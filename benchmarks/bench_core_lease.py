"""Two CPU workers on one host: what each one's timing of the seed recipe becomes beside the other.

    python benchmarks/bench_core_lease.py [--flags "--threads 1"] [--checkout DIR ...] [--rounds N]

Per checkout (this one, and each --checkout: another clone, e.g. the commit before the core lease),
on a fresh SQLite study of studies/mnist_fast.toml with `--device cpu --n-trials 1` plus --flags:
- alone: one worker; its yardstick (the seed recipe timed before the search) and its trial;
- two: two workers started at once, the same. The trial asked first is the enqueued seed recipe
  (the baseline trial), so one of the two runs it.
Printed: each worker's yardstick seconds and the baseline trial's seconds, the ratio to "alone",
and whether the two trials' spans overlapped.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
YARDSTICK = re.compile(r"yardstick: the seed recipe takes ([0-9.]+) s here")


def run_workers(checkout: Path, count: int, flags: list[str],
                data_dir: str) -> tuple[list[float], float, bool]:
    """(each worker's yardstick seconds, the baseline trial's seconds, whether trials overlapped)."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/optuna.db"
        env = {**os.environ, "PYTHONPATH": str(checkout), "FAST_MNIST_LOCK_DIR": f"{folder}/locks"}
        env.pop("OPTUNA_STORAGE", None)
        command = [sys.executable, "-m", "search.worker", "--spec", "studies/mnist_fast.toml",
                   "--storage", url, "--n-trials", "1", "--device", "cpu", "--data-dir", data_dir,
                   "--no-progress", *flags]
        workers = [subprocess.Popen(command, cwd=checkout, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for _ in range(count)]
        outputs = [worker.communicate()[0] for worker in workers]
        yardsticks = []
        for worker, output in zip(workers, outputs, strict=True):
            match = YARDSTICK.search(output)
            if worker.returncode != 0 or match is None:
                raise SystemExit(f"worker in {checkout} failed ({worker.returncode}):\n{output}")
            yardsticks.append(float(match.group(1)))
        trials = optuna.load_study(study_name="mnist_fast", storage=url).get_trials(deepcopy=False)
        baseline = next(t for t in trials if t.user_attrs.get("baseline"))
        spans = [(t.datetime_start, t.datetime_complete) for t in trials]
        overlap = len(spans) == 2 and spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]
        # A run stopped by the time limit is PRUNED with its seconds so far, hence the fallback.
        seconds = (baseline.user_attrs.get("seconds")
                   or max(baseline.user_attrs.get("seconds_per_seed") or [0.0]))
        return yardsticks, float(seconds), overlap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flags", default="", help="extra worker flags, e.g. '--threads 1'")
    parser.add_argument("--checkout", action="append", default=[], type=Path,
                        help="another clone to run as well (default: only this one)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "mnist"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    flags = shlex.split(args.flags)
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, flags {flags or 'none'}")
    for round_number in range(args.rounds):
        for checkout in [ROOT, *args.checkout]:
            alone, alone_baseline, _ = run_workers(checkout, 1, flags, args.data_dir)
            two, two_baseline, overlap = run_workers(checkout, 2, flags, args.data_dir)
            print(f"round {round_number + 1} {checkout}:\n"
                  f"  alone: yardstick {alone[0]:.3f} s, baseline trial {alone_baseline:.3f} s\n"
                  f"  two:   yardsticks {', '.join(f'{s:.3f}' for s in two)} s "
                  f"({', '.join(f'{s / alone[0]:.2f}x' for s in two)}), baseline trial "
                  f"{two_baseline:.3f} s ({two_baseline / alone_baseline:.2f}x), "
                  f"trials overlapped: {overlap}")


if __name__ == "__main__":
    main()
