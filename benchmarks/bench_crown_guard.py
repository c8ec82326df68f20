"""The crown guard on simulated searches: with how many seeds does the accuracy a study reports
for its winner match what fresh seeds give?

A simulated search tries `--candidates` configs, fastest first, each with a true mean accuracy
drawn from N(--center, --spread) (near the bar, as a real search's contenders are) and seed-to-seed
noise --seed-sd (measured: docs/search.md). Each runs seed by seed through the real rules
(objective.seeds.stop_reason, the spec's settings but the crown size); the first one crowned is
the winner. Its reported accuracy (the mean of its seeds) is compared with a fresh 10-seed mean.
No training: this isolates the rule from the clock.

    python benchmarks/bench_crown_guard.py [--crowns 3,10,20,30] [--searches 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objective.result import RunResult  # noqa: E402
from objective.seeds import SeedRules, mean_accuracy, stop_reason  # noqa: E402
from studies.spec import load_spec  # noqa: E402

FRESH_SEEDS = 10


def run(accuracy: float, index: int) -> RunResult:
    return RunResult(seed=index, accuracy=accuracy, holdout_accuracy=accuracy, seconds=1.0,
                     train_seconds=1.0, steps=1, diverged=False, over_time=False)


def one_search(rules: SeedRules, args: argparse.Namespace, rng: random.Random) -> tuple[float, float] | None:
    """(true mean, reported mean) of the winner, or None when no candidate was crowned."""
    for _ in range(args.candidates):
        true_mean = rng.gauss(args.center, args.spread)
        runs: list[RunResult] = []
        while True:
            runs.append(run(round(rng.gauss(true_mean, args.seed_sd), 4), len(runs)))
            reason = stop_reason(runs, rules, to_beat=2.0)  # every candidate beats it: all are fast
            if reason is not None:
                break
        if reason.startswith(("crowned", "a contender")):
            return true_mean, mean_accuracy(runs)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(ROOT / "studies" / "mnist_fast.toml"))
    parser.add_argument("--crowns", default="3,10,20,30", help="crown_seeds values to compare")
    parser.add_argument("--searches", type=int, default=2000)
    parser.add_argument("--candidates", type=int, default=60)
    parser.add_argument("--center", type=float, default=0.9910)
    parser.add_argument("--spread", type=float, default=0.0003)
    parser.add_argument("--seed-sd", type=float, default=0.00085)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = load_spec(args.spec).objective.seed_rules()
    print(f"bar {100 * base.bar:.2f} %, repeats {base.repeats}; candidates' true means "
          f"N({100 * args.center:.2f} %, {100 * args.spread:.2f} points), seed sd "
          f"{100 * args.seed_sd:.3f} points; {args.searches} searches of {args.candidates} candidates\n")
    print("| crown seeds | searches crowning a winner | reported - fresh, mean | "
          "abs(reported - fresh) <= 0.05 points | winner's true mean, median | true mean >= 99.12 % |")
    print("|---|---|---|---|---|---|")
    for crown in (int(part) for part in args.crowns.split(",")):
        rules = dataclasses.replace(base, crown_seeds=crown)
        rng = random.Random(args.seed)
        winners = [w for w in (one_search(rules, args, rng) for _ in range(args.searches)) if w]
        gaps = [reported - statistics.fmean(rng.gauss(true, args.seed_sd) for _ in range(FRESH_SEEDS))
                for true, reported in winners]
        trues = [true for true, _ in winners]
        close = sum(abs(gap) <= 0.0005 for gap in gaps) / len(gaps)
        good = sum(true >= 0.9912 for true in trues) / len(trues)
        print(f"| {crown} | {len(winners) / args.searches:.2f} | {100 * statistics.fmean(gaps):+.3f} points "
              f"| {close:.2f} | {100 * statistics.median(trues):.3f} % | {good:.2f} |")


if __name__ == "__main__":
    main()
