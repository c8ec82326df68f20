"""The `cuda_graphs` knob against eager steps, in one process on one GPU, seeds interleaved.

    python benchmarks/bench_cuda_graphs.py --device cuda --seeds 10 [--data-dir ../shared/mnist]

For each of eager and graphed, with channels_last on and off: the seed recipe's timed seconds
(objective.timed_run.train_once, the clock as docs/timing.md says) and accuracy on the same seeds,
the variants taking turns seed by seed so that drift lands on all of them alike. Then the untimed
capture's cost: the warm-up of the recipe with three Adam betas this process has not seen (each
is a capture of its own, since the fused Adam kernel takes its betas as numbers).
Prints one JSON object (last line) after a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objective.config import TrainConfig  # noqa: E402
from objective.data import load_resident, resolve_root  # noqa: E402
from objective.timed_run import resolve_device, train_once, warm_up  # noqa: E402

VARIANTS = {
    "eager, channels_last": TrainConfig(),
    "graphed, channels_last": TrainConfig(cuda_graphs=True),
    "eager, NCHW": TrainConfig(channels_last=False),
    "graphed, NCHW": TrainConfig(cuda_graphs=True, channels_last=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "mnist"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_resident(resolve_root(args.data_dir), device)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    for seed in range(args.seeds):
        for name, config in VARIANTS.items():
            run = train_once(config.replace(seed=seed), data)
            runs[name].append((run.seconds, run.test_accuracy))
    captures = []
    for beta1 in (0.71, 0.72, 0.73):
        config = TrainConfig(cuda_graphs=True, beta1=beta1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        warm_up(config, data)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        captures.append(time.perf_counter() - started)
    eager = statistics.median(s for s, _ in runs["eager, channels_last"])
    rows = {name: {"median_seconds": statistics.median(s for s, _ in pairs),
                   "mean_accuracy": statistics.fmean(a for _, a in pairs),
                   "seconds": [s for s, _ in pairs], "accuracies": [a for _, a in pairs]}
            for name, pairs in runs.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"cuda_graphs against eager, {time.strftime('%Y-%m-%d')}, {name}, torch {torch.__version__}, "
          f"seeds 0..{args.seeds - 1}; command: `python {' '.join(sys.argv)}`\n")
    print("| variant | median s | vs eager, channels_last | mean accuracy |\n|---|---|---|---|")
    for variant, row in rows.items():
        print(f"| {variant} | {row['median_seconds']:.4f} | {row['median_seconds'] / eager:.2f}x | "
              f"{100 * row['mean_accuracy']:.3f} % |")
    print(f"\ncapture (untimed warm-up of unseen betas): {', '.join(f'{c:.3f}' for c in captures)} s\n")
    print(json.dumps({"device": name, "torch": torch.__version__, "rows": rows,
                      "capture_seconds": captures}))


if __name__ == "__main__":
    main()
