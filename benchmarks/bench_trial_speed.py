"""Trial speed: the objective's training run against the reference seed recipe, in one run.

    python benchmarks/bench_trial_speed.py --data-dir ../shared/mnist --seeds 0,1,2,3,4

Each variant (ours with the defaults, ours with a speed knob turned off, the reference script) runs
as its own process, with its own untimed warm-up, on the same seeds; the rounds interleave the
variants so drift in machine load hits all of them alike. Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reference import REFERENCE  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "objective (defaults: channels_last, bf16 auto, fused Adam)": [],
    "objective, bf16 autocast off": ["--set", "bf16_autocast=off"],
    "objective, bf16 autocast on": ["--set", "bf16_autocast=on"],
    "objective, bf16 off and channels_last off": ["--set", "bf16_autocast=off",
                                                  "--set", "channels_last=false"],
}


def run_json(command: list[str]) -> dict:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "mnist"))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions of every variant")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference", default=str(REFERENCE))
    parser.add_argument("--skip", action="append", default=[], metavar="TEXT",
                        help="leave out the variants whose name contains TEXT (repeatable)")
    args = parser.parse_args()

    variants = {name: extra for name, extra in VARIANTS.items()
                if not any(text in name for text in args.skip)}
    commands = {name: [sys.executable, "-m", "objective.train", "--data-dir", args.data_dir,
                       "--seeds", args.seeds, "--device", args.device, "--json", *extra]
                for name, extra in variants.items()}
    commands["reference (shared/reference/seed_recipe.py)"] = [
        sys.executable, args.reference, "--data-dir", args.data_dir, "--seeds", args.seeds,
        "--device", args.device, "--json"]
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, command in commands.items():
            runs[name].extend(run_json(command)["runs"])

    reference_median = statistics.median(r["seconds"] for r in runs[list(commands)[-1]])
    print(f"device {args.device}, seeds {args.seeds}, rounds {args.rounds}, {time.strftime('%Y-%m-%d')}\n")
    print("| variant | runs | median s | ratio to reference | mean accuracy | runs >= 99 % |")
    print("|---|---|---|---|---|---|")
    for name, results in runs.items():
        median = statistics.median(r["seconds"] for r in results)
        accuracy = statistics.fmean(r["accuracy"] for r in results)
        passed = sum(r["accuracy"] >= 0.99 for r in results)
        print(f"| {name} | {len(results)} | {median:.3f} | {median / reference_median:.2f}x | "
              f"{100 * accuracy:.3f} % | {passed}/{len(results)} |")


if __name__ == "__main__":
    main()
