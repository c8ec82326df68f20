"""Scaling: throughput of N worker processes sharing one Postgres study, N = 1, 2, 4, 8, 16.

    python benchmarks/bench_scaling.py --workers 1,2,4,8,16 --seconds 30 --trial-seconds 0.2

Each worker is a real process running the worker's trial loop (benchmarks/sleep_worker.py) whose
trials "train" by sleeping, so the measurement is of the service (sampler + database), not of
this machine's two cores. All N start on a common signal after their imports; trials finished in
the window count. Ratio = throughput / (N x one worker's throughput).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench_duty_cycle import drop_postgres, fresh_postgres  # benchmarks/ is on sys.path


def child(url: str, start_at: float, seconds: float, trial_seconds: float, seed: int) -> None:
    from sleep_worker import run_loop

    time.sleep(max(0.0, start_at - time.time()))
    _, ran, wall = run_loop(url, "scaling", trial_seconds, None, seconds, sampler_seed=seed)
    print(json.dumps({"ran": ran, "wall": wall}))


def measure(workers: int, seconds: float, trial_seconds: float) -> tuple[float, float]:
    name, url = fresh_postgres()
    try:
        # Create the study (and its baseline) once, so the workers only join it.
        subprocess.run([sys.executable, __file__, "--child", url, str(time.time()), "0.01",
                        str(trial_seconds), "0"], check=True, capture_output=True)
        start_at = time.time() + 8.0 + 0.5 * workers  # time for every process to import torch
        processes = [subprocess.Popen([sys.executable, __file__, "--child", url, str(start_at),
                                       str(seconds), str(trial_seconds), str(index + 1)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                     for index in range(workers)]
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in processes]
    finally:
        drop_postgres(name)
    trials = sum(r["ran"] for r in results)
    wall = max(r["wall"] for r in results)
    return trials, trials / wall


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, start_at, seconds, trial_seconds, seed = sys.argv[2:7]
        child(url, float(start_at), float(seconds), float(trial_seconds), int(seed))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window per N")
    parser.add_argument("--trial-seconds", type=float, default=0.2)
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    print(f"{args.trial_seconds} s trials, {args.seconds:.0f} s window, mnist_fast space, TPE, "
          f"one fresh PostgreSQL database per N, {time.strftime('%Y-%m-%d')}\n")
    print("| workers | trials | trials/s | ratio to N x one worker |")
    print("|---|---|---|---|")
    single = None
    for workers in counts:
        trials, rate = measure(workers, args.seconds, args.trial_seconds)
        single = single or rate / workers
        print(f"| {workers} | {trials} | {rate:.2f} | {rate / (workers * single):.2f} |", flush=True)


if __name__ == "__main__":
    main()
