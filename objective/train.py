"""`python -m objective.train`: timed training runs of one config, one per seed.

    python -m objective.train --data-dir ../shared/mnist --seeds 0,1,2 [--config best.json]
        [--set lr=0.02 --set batch_size=512] [--device auto|cpu|cuda|cuda:N] [--json]

Defaults are the seed recipe's hyperparameters. `--json` prints the shape the reference script
prints (`runs`, `median_seconds`, `mean_accuracy`, `device`), so the two compare directly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

import torch

from objective.cli import OneLineParser
from objective.config import ConfigError, TrainConfig, from_dict, load_json, parse_assignment
from objective.data import load_resident, resolve_root
from objective.errors import UserError
from objective.timed_run import RunResult, resolve_device, train_once


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    return seeds


def build_config(config_file: str | None, assignments: list[str]) -> TrainConfig:
    values: dict[str, Any] = load_json(config_file) if config_file else {}
    values.update(parse_assignment(text) for text in assignments)
    return from_dict(values)


def summarize(runs: list[RunResult], device: torch.device, config: TrainConfig) -> dict[str, Any]:
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fingerprint": runs[0].fingerprint,
        "config": config.to_dict(),
        "runs": [run.to_dict() for run in runs],
        "median_seconds": statistics.median(run.seconds for run in runs),
        "mean_accuracy": statistics.fmean(run.test_accuracy for run in runs),  # all 10,000: as the reference
    }


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m objective.train", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON file of config fields (or an export from search.export)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field; repeatable")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, one timed run each")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-dir", help="torchvision MNIST root (default: $MNIST_DATA or ~/.cache/fast-mnist)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = build_config(args.config, args.set)
        seeds = parse_seeds(args.seeds)
        device = resolve_device(args.device)
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        data = load_resident(resolve_root(args.data_dir), device)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs = []
    for seed in seeds:
        run = train_once(config.replace(seed=seed), data)
        runs.append(run)
        if not args.json:
            flag = " (diverged)" if run.diverged else ""
            print(f"seed {seed}: {run.seconds:.3f} s, accuracy {100 * run.test_accuracy:.2f} %{flag}",
                  flush=True)
    summary = summarize(runs, device, config)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"median {summary['median_seconds']:.3f} s, "
              f"mean accuracy {100 * summary['mean_accuracy']:.3f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
