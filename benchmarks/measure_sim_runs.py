"""Real runs over the search space, the data the simulated device is fitted to.

    python benchmarks/measure_sim_runs.py --data-dir ../shared/mnist --out objective/sim/runs_cpu.csv
        [--random 100] [--local 40] [--seeds-per-config 2] [--recipe-every 5] [--reference-every 60]

Trains, in one process on this machine's CPU (every core, one torch thread each), in a shuffled
order so that the machine's drift does not line up with any knob:
- `--random` configs drawn uniformly from studies/mnist_fast.toml's space (log ranges in log);
- `--local` configs near the seed recipe: two to four of its parameters redrawn, the rest kept;
- the spec's start points;
each on `--seeds-per-config` seeds; and the seed recipe itself every `--recipe-every` runs, on
seeds 0, 1, 2, ... in turn, so its per-seed spread, the clock's run-to-run noise, its drift over
the whole measurement and its rare spikes all come from the same session. Every run is timed by
`objective.timed_run.train_once` (warm-up outside the clock, docs/timing.md) with a 60 s limit, and
appended to the CSV as it finishes, with the CPU's name and the torch version. The reference script
(benchmarks/reference.py) runs at the start, every `--reference-every` runs and at the end, on seeds
0, 1, 2, as rows of kind `reference` (its median seconds and mean accuracy): the machine's speed
during the measurement, which a later check on this CPU, whose speed moves between days, scales by.
objective/sim/fit.py turns the CSV into the simulator's model.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reference import time_reference  # noqa: E402
from objective.config import TrainConfig  # noqa: E402
from objective.data import load_resident, resolve_root  # noqa: E402
from objective.timed_run import fingerprint, train_once  # noqa: E402
from studies.spec import load_spec  # noqa: E402

SPEC = ROOT / "studies" / "mnist_fast.toml"
TIME_LIMIT = 60.0
RESULTS = [
    "kind",
    "seed",
    "test_accuracy",  # on all 10,000 test images, what the accuracy model predicts
    "accuracy",  # on the selection half, and on the held-out half (objective/result.py)
    "holdout_accuracy",
    "seconds",
    "train_seconds",
    "steps",
    "diverged",
    "over_time",
    "started_at",
    "cpu",
    "torch",
    "threads",
    "bf16",
]


def draw(dist: Any, rng: random.Random) -> Any:
    """One value of an Optuna distribution, uniformly (in log space where the range is log)."""
    if isinstance(dist, CategoricalDistribution):
        return rng.choice(dist.choices)
    if isinstance(dist, IntDistribution):
        if dist.log:
            return min(
                dist.high,
                max(dist.low, round(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))),
            )
        return rng.randrange(dist.low, dist.high + 1, dist.step)
    assert isinstance(dist, FloatDistribution)
    if dist.log:
        return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
    return rng.uniform(dist.low, dist.high)


def plan(random_configs: int, local_configs: int, seeds: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    spec = load_spec(SPEC)
    rng = random.Random(seed)
    names = list(spec.space)
    configs: list[tuple[str, dict[str, Any]]] = []
    for _ in range(random_configs):
        configs.append(("random", {name: draw(dist, rng) for name, dist in spec.space.items()}))
    for _ in range(local_configs):
        changed = rng.sample(names, rng.randint(2, 4))
        configs.append(("local", {name: draw(spec.space[name], rng) for name in changed}))
    configs += [("start", dict(point)) for point in spec.starts]
    runs = [
        (kind, {**params, "seed": 100 + index * seeds + k})
        for index, (kind, params) in enumerate(configs)
        for k in range(seeds)
    ]
    rng.shuffle(runs)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "mnist"))
    parser.add_argument("--out", default=str(ROOT / "objective" / "sim" / "runs_cpu.csv"))
    parser.add_argument("--random", type=int, default=100)
    parser.add_argument("--local", type=int, default=40)
    parser.add_argument("--seeds-per-config", type=int, default=2)
    parser.add_argument("--recipe-every", type=int, default=5)
    parser.add_argument("--reference-every", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws and the order")
    args = parser.parse_args()

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    device = torch.device("cpu")
    data = load_resident(resolve_root(args.data_dir), device)
    print_ = fingerprint(device)
    spec = load_spec(SPEC)
    columns = list(spec.space) + RESULTS
    runs = plan(args.random, args.local, args.seeds_per_config, args.seed)
    schedule: list[tuple[str, dict[str, Any]]] = []
    recipe_seed = 0
    for index, run in enumerate(runs):
        if index % args.reference_every == 0:
            schedule.append(("reference", {}))
        if index % args.recipe_every == 0:
            schedule.append(("recipe", {"seed": recipe_seed}))
            recipe_seed += 1
        schedule.append(run)
    schedule.append(("reference", {}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for number, (kind, params) in enumerate(schedule, 1):
            config = TrainConfig().replace(**params)
            row = {name: getattr(config, name) for name in spec.space}
            row.update(cpu=print_["device"], torch=torch.__version__, threads=torch.get_num_threads(),
                       started_at=round(time.time() - started, 1))
            if kind == "reference":
                anchor = time_reference(args.data_dir, "0,1,2")
                row.update(kind=kind, seed=0, test_accuracy=anchor["mean_accuracy"],
                           seconds=round(anchor["median_seconds"], 4), train_seconds=0, steps=0, diverged=0,
                           over_time=0, bf16="")
                writer.writerow(row)
                print(f"{number}/{len(schedule)} reference {anchor['median_seconds']:.3f} s", flush=True)
                continue
            result = train_once(config, data, TIME_LIMIT)
            row.update(
                kind=kind,
                seed=config.seed,
                test_accuracy=result.test_accuracy,
                accuracy=result.accuracy,
                holdout_accuracy=result.holdout_accuracy,
                seconds=round(result.seconds, 4),
                train_seconds=round(result.train_seconds, 4),
                steps=result.steps,
                diverged=int(result.diverged),
                over_time=int(result.over_time),
                bf16=int(bool(result.fingerprint.get("bf16_autocast"))),
            )
            writer.writerow(row)
            handle.flush()
            print(
                f"{number}/{len(schedule)} {kind} {result.seconds:.3f} s {100 * result.test_accuracy:.2f} %",
                flush=True,
            )


if __name__ == "__main__":
    main()
