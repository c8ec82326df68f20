"""Search outcome: does a budgeted search find a config faster than the seed recipe that passes
99 % more reliably? One run does all of it, side by side:

1. a fresh study of `studies/mnist_fast.toml` (its budget: 60 trials) searched by real
   `python -m search.worker` processes on a SQLite file;
2. `python -m search.export --verify N` of the best trial (N fresh seeds, 1000...);
3. the reference script on the same fresh seeds, in the same run, on the same machine.

    python benchmarks/bench_search_outcome.py --data-dir ../shared/mnist [--workers 1] [--verify 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "seed_recipe.py"


def run(command: list[str]) -> str:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command[:4])} ... failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def search(spec: str, url: str, workers: int, threads: int | None, data_dir: str) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "search.worker", "--spec", spec, "--storage", url,
               "--device", "cpu", "--data-dir", data_dir, "--no-progress"]
    if threads:
        command += ["--threads", str(threads)]
    processes = [subprocess.Popen([*command, "--sampler-seed", str(index)], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for index in range(workers)]
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            sys.exit(f"error: a worker failed: {err.strip()[-500:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "mnist"))
    parser.add_argument("--spec", default="studies/mnist_fast.toml")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: torch's)")
    parser.add_argument("--verify", type=int, default=10)
    parser.add_argument("--storage", help="default: a fresh SQLite file in a temporary folder")
    parser.add_argument("--reference", default=str(REFERENCE))
    args = parser.parse_args()
    if not Path(args.reference).is_file():  # checked now, not after half an hour of search
        parser.error(f"no reference script at {args.reference} (pass --reference)")

    with tempfile.TemporaryDirectory() as scratch:
        url = args.storage or f"sqlite:///{scratch}/outcome.db"
        search_seconds = search(args.spec, url, args.workers, args.threads, args.data_dir)
        out = Path(scratch) / "best.json"
        verify = [sys.executable, "-m", "search.export", "--storage", url, "--study", "mnist_fast",
                  "--out", str(out), "--verify", str(args.verify), "--device", "cpu",
                  "--data-dir", args.data_dir]
        if args.threads:
            verify += ["--threads", str(args.threads)]
        run(verify)
        best = json.loads(out.read_text())
        seeds = ",".join(str(run_["seed"]) for run_ in best["verification"]["runs"])
        reference = json.loads(run([sys.executable, args.reference, "--data-dir", args.data_dir,
                                    "--seeds", seeds, "--device", "cpu", "--json"]).splitlines()[-1])

    found = best["verification"]["runs"]
    rows = [("found config (export --verify)", found),
            ("reference seed recipe", reference["runs"])]
    print(f"search: {args.workers} worker(s), {search_seconds:.0f} s wall; best trial "
          f"{best['trial']} ({'baseline' if best.get('baseline') else 'searched'}), "
          f"search value {best['metrics']['value']:.3f} s")
    print("config: " + json.dumps({k: v for k, v in best["config"].items()
                                    if k in ("lr", "beta1", "beta2", "batch_size", "epochs",
                                             "conv1_kernel", "conv2_kernel", "conv1_width",
                                             "conv2_width", "fc_width")}))
    print(f"\nfresh seeds {seeds}\n")
    print("| | median s | ratio to reference | mean accuracy (first 5) | mean accuracy (all) "
          "| seeds >= 99 % |")
    print("|---|---|---|---|---|---|")
    reference_median = statistics.median(r["seconds"] for r in reference["runs"])
    for name, runs in rows:
        median = statistics.median(r["seconds"] for r in runs)
        first5 = statistics.fmean(r["accuracy"] for r in runs[:5])
        every = statistics.fmean(r["accuracy"] for r in runs)
        passed = sum(r["accuracy"] >= 0.99 for r in runs)
        print(f"| {name} | {median:.3f} | {median / reference_median:.2f}x | {100 * first5:.3f} % "
              f"| {100 * every:.3f} % | {passed}/{len(runs)} |")


if __name__ == "__main__":
    main()
