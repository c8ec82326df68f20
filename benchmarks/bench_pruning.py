"""Time-budget pruning: search wall time to reach the same best value, with and without it.

    python benchmarks/bench_pruning.py --data-dir ../shared/mnist --trials 30

Arm "off": `studies/mnist_fast.toml` searched by its TPE sampler (fixed seed) with pruning off.
Arm "on": the very same sequence of configs replayed (enqueued in order) with the spec's time-budget
pruning on. Replaying isolates the pruner's effect: with a live sampler the pruned trials would
steer TPE elsewhere and the two arms would no longer try the same configs. Both arms reach the same
best config at the same trial index; the table compares the wall time until then, and in total.
Wall time here is everything the search loop spends (training, warm-ups, Optuna, SQLite).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import optuna
import torch

from objective.data import load_resident, resolve_root
from objective.objective import Objective
from studies.spec import load_spec
from studies.storage import open_storage

ROOT = Path(__file__).resolve().parents[1]


def search(spec, settings, url: str, sampler: optuna.samplers.BaseSampler, data,
           replay: list[dict] | None, trials: int) -> tuple[optuna.Study, list[float]]:
    study = optuna.create_study(storage=open_storage(url, heartbeat=False), sampler=sampler)
    for params in replay or []:
        study.enqueue_trial(params)
    objective = Objective(spec.space, spec.base, settings, data)
    started = time.perf_counter()
    finished_at = []
    for _ in range(trials):
        study.optimize(objective, n_trials=1)
        finished_at.append(time.perf_counter() - started)
    return study, finished_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "mnist"))
    parser.add_argument("--spec", default=str(ROOT / "studies" / "mnist_fast.toml"))
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    spec = load_spec(args.spec)
    data = load_resident(resolve_root(args.data_dir), torch.device("cpu"))
    on = spec.objective
    off = dataclasses.replace(on, budget_margin=None)
    with tempfile.TemporaryDirectory() as scratch:
        # Both arms start from the seed-recipe baseline, as every study of the service does.
        study_off, times_off = search(spec, off, f"sqlite:///{scratch}/off.db",
                                      spec.make_sampler(args.seed), data, [spec.baseline_params()],
                                      args.trials)
        replay = [t.params for t in study_off.trials]
        study_on, times_on = search(spec, on, f"sqlite:///{scratch}/on.db",
                                    optuna.samplers.RandomSampler(seed=args.seed), data, replay,
                                    args.trials)
    best = study_off.best_trial.number
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study_on.trials)
    best_on = study_on.trials[best].value or float("nan")
    print(f"{args.trials} trials of {Path(args.spec).name}, TPE seed {args.seed}, margin "
          f"{on.budget_margin}; best config at trial {best}: {study_off.best_value:.3f} s off, "
          f"{best_on:.3f} s on; {pruned} trials pruned\n")
    print("| | wall s to reach the best | ratio | wall s for all trials | ratio |")
    print("|---|---|---|---|---|")
    print(f"| pruning off | {times_off[best]:.1f} | 1.00x | {times_off[-1]:.1f} | 1.00x |")
    print(f"| time-budget pruning on | {times_on[best]:.1f} | {times_on[best] / times_off[best]:.2f}x | "
          f"{times_on[-1]:.1f} | {times_on[-1] / times_off[-1]:.2f}x |")


if __name__ == "__main__":
    main()
