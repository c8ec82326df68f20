"""Clock noise: how much one config's timed seconds move, and what cancels the movement.

One process times the seed recipe (A) and a narrower config (B) alternately, same seed each time,
for `--pairs` pairs; then `--processes` fresh processes time A `--runs` times each. It prints:
- the spread of A and B in one process (CV, max/min) and the drift from the first to the last fifth;
- B normalised three ways: by the A timed just before it (paired), by the median of the last 3
  yardstick runs of A taken every `--every` pairs (the search's yardstick), and not at all;
- across processes: the spread of the per-process medians, and each process's first run
  against its later ones.

    python benchmarks/bench_clock_noise.py --data-dir ../shared/mnist [--pairs 40] [--every 4]
        [--processes 4] [--runs 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objective.config import TrainConfig  # noqa: E402
from objective.data import load_resident, resolve_root  # noqa: E402
from objective.timed_run import train_once  # noqa: E402

NARROW = {"conv1_width": 16}  # B: a config the search prefers, ~0.75x the recipe's seconds here


def cv(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.fmean(values)


def one_process(data_dir: str, pairs: int) -> list[dict[str, float]]:
    data = load_resident(resolve_root(data_dir), torch.device("cpu"))
    recipe, narrow = TrainConfig(), TrainConfig().replace(**NARROW)
    started = time.perf_counter()
    rows = []
    for _ in range(pairs):
        a = train_once(recipe, data).seconds
        b = train_once(narrow, data).seconds
        rows.append({"at": time.perf_counter() - started, "a": a, "b": b})
    return rows


def yardstick_normalised(rows: list[dict[str, float]], every: int) -> list[float]:
    """B / (median of the last 3 A's taken every `every` pairs), scaled to A's overall median."""
    scale = statistics.median(row["a"] for row in rows)
    sticks: list[float] = []
    normalised = []
    for index, row in enumerate(rows):
        if index % every == 0:
            sticks.append(row["a"])
        normalised.append(row["b"] * scale / statistics.median(sticks[-3:]))
    return normalised


def across_processes(data_dir: str, processes: int, runs: int) -> list[list[float]]:
    seeds = ",".join("0" * runs)
    out = []
    for _ in range(processes):
        done = subprocess.run([sys.executable, "-m", "objective.train", "--data-dir", data_dir,
                               "--seeds", seeds, "--device", "cpu", "--json"],
                              cwd=ROOT, capture_output=True, text=True, check=True)
        out.append([run["seconds"] for run in json.loads(done.stdout)["runs"]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "mnist"))
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--every", type=int, default=4, help="yardstick period, in pairs")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    rows = one_process(args.data_dir, args.pairs)
    a = [row["a"] for row in rows]
    b = [row["b"] for row in rows]
    fifth = max(1, len(rows) // 5)
    report = {
        "minutes": rows[-1]["at"] / 60,
        "a_median": statistics.median(a), "a_cv": cv(a), "a_max_over_min": max(a) / min(a),
        "a_drift": statistics.median(a[-fifth:]) / statistics.median(a[:fifth]) - 1,
        "b_median": statistics.median(b), "b_cv": cv(b),
        "b_paired_cv": cv([row["b"] / row["a"] for row in rows]),
        "b_yardstick_cv": cv(yardstick_normalised(rows, args.every)),
    }
    per_process = across_processes(args.data_dir, args.processes, args.runs)
    medians = [statistics.median(runs) for runs in per_process]
    report.update({
        "process_medians": medians, "process_median_cv": cv(medians),
        "first_run_over_rest": statistics.fmean(runs[0] / statistics.median(runs[1:])
                                                for runs in per_process if len(runs) > 1),
    })
    if args.json:
        print(json.dumps({**report, "rows": rows, "per_process": per_process}))
        return
    print(f"one process, {args.pairs} pairs over {report['minutes']:.1f} min, seed 0 throughout")
    print(f"  A (seed recipe): median {report['a_median']:.3f} s, CV {100 * report['a_cv']:.1f} %, "
          f"max/min {report['a_max_over_min']:.2f}, drift first->last fifth {100 * report['a_drift']:+.1f} %")
    print(f"  B ({json.dumps(NARROW)}): median {report['b_median']:.3f} s")
    print(f"    CV raw {100 * report['b_cv']:.1f} %, paired with the A before it "
          f"{100 * report['b_paired_cv']:.1f} %, yardstick every {args.every} pairs "
          f"{100 * report['b_yardstick_cv']:.1f} %")
    print(f"{args.processes} fresh processes x {args.runs} runs of A: medians "
          + ", ".join(f"{m:.3f}" for m in medians)
          + f" s (CV {100 * report['process_median_cv']:.1f} %); first run / rest "
          f"{report['first_run_over_rest']:.2f}")


if __name__ == "__main__":
    main()
