"""What the space buys: the seed recipe with one hand-fixed choice changed at a time, trained by the
project's trainer, all configs alternating seed by seed so a drifting clock hits each alike.

    python benchmarks/bench_space.py [--seeds 2000..2009] [--json]

The variants are the knobs the search may move that the recipe fixed by hand (BatchNorm, the
one-cycle schedule's shape), alone and on a narrower first conv.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objective.config import TrainConfig  # noqa: E402
from objective.data import load_resident, resolve_root  # noqa: E402
from objective.timed_run import train_once  # noqa: E402

VARIANTS: dict[str, dict[str, object]] = {
    "seed recipe": {},
    "BatchNorm after conv2": {"batch_norm": "conv2"},
    "BatchNorm after both convs": {"batch_norm": "both"},
    "one-cycle: warm-up 0.2, final lr / 100": {"pct_start": 0.2, "final_div_factor": 100.0},
    "conv1 width 16": {"conv1_width": 16},
    "conv1 width 16, BatchNorm after conv2": {"conv1_width": 16, "batch_norm": "conv2"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "mnist"))
    parser.add_argument("--seeds", default="2000..2009", help="FIRST..LAST, fresh to every search")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    first, last = (int(part) for part in args.seeds.split(".."))
    data = load_resident(resolve_root(args.data_dir), torch.device("cpu"))
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for seed in range(first, last + 1):
        for name, changes in VARIANTS.items():
            result = train_once(TrainConfig(seed=seed).replace(**changes), data)
            runs[name].append((result.seconds, result.test_accuracy))
    if args.json:
        print(json.dumps(runs))
        return
    recipe = statistics.median(seconds for seconds, _ in runs["seed recipe"])
    print(f"seeds {first}..{last}, {torch.get_num_threads()} threads\n")
    print("| variant | median s | vs recipe | mean accuracy | accuracy sd | seeds >= 99 % |")
    print("|---|---|---|---|---|---|")
    for name, results in runs.items():
        median = statistics.median(seconds for seconds, _ in results)
        accuracies = [accuracy for _, accuracy in results]
        passed = sum(accuracy >= 0.99 for accuracy in accuracies)
        mean = 100 * statistics.fmean(accuracies)
        print(f"| {name} | {median:.3f} | {median / recipe:.2f}x | {mean:.3f} % "
              f"| {100 * statistics.stdev(accuracies):.3f} | {passed}/{len(results)} |")


if __name__ == "__main__":
    main()
