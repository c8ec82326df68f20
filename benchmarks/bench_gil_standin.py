"""Does the service's work slow a Python-bound timed run beside it? The training process's answer.

    python benchmarks/bench_gil_standin.py [--rounds 5] [--data-dir ../shared/mnist]

A GPU run of this network is bound by Python launching kernels; this machine has no GPU, so the
stand-in is a run bound the same way: the real training step (`objective.timed_run.train_once`) of a
tiny config on one CPU thread, so each of its ~40 ops per step is dispatch, not arithmetic (batch
8, widths 8/8/32, 4,096 images: 512 steps). Beside it, the service's heaviest work runs without a
pause on a thread: TPE asking, suggesting the 13 parameters of studies/mnist_fast.toml and telling,
on an in-memory study of 500 trials (pure Python, never waiting on a database, so it wants the
interpreter all the time). Three ways, interleaved over the rounds:
- alone: the stand-in in the training process (objective/trainer_process.py), nothing beside it;
- beside, as the worker runs it: the stand-in in the training process, the service in this one;
- beside, in one interpreter (the worker's design before the training process): the stand-in in
  this process, the service on a thread of it.
The training process is pinned to core 0 and this process to the others; in one interpreter, the
process has every core, so what is left is the interpreter lock alone.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objective.config import TrainConfig  # noqa: E402
from objective.optuna_objective import suggest  # noqa: E402
from objective.trainer_process import TrainingProcess  # noqa: E402
from studies.spec import load_spec  # noqa: E402

STAND_IN = TrainConfig(
    train_subset=4096,
    batch_size=8,
    conv1_width=8,
    conv2_width=8,
    fc_width=32,
    eval_batch=1000,
    channels_last=False,
    bf16_autocast="off",
    check_every=64,
)


class Service:
    """TPE's ask/suggest/tell, back to back on a thread, until stopped."""

    def __init__(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = load_spec(ROOT / "studies" / "mnist_fast.toml").space
        self.study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
        rng = random.Random(0)
        for _ in range(500):
            trial = self.study.ask()
            for name, dist in self.space.items():
                suggest(trial, name, dist)
            self.study.tell(trial, rng.random())
        self.asks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        rng = random.Random(1)
        while not self._stop.is_set():
            trial = self.study.ask()
            for name, dist in self.space.items():
                suggest(trial, name, dist)
            self.study.tell(trial, rng.random())
            self.asks += 1

    def __enter__(self) -> Service:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3, help="stand-in runs per way per round")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "mnist"))
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    trainer = TrainingProcess()
    trainer.load("cpu", 1, (cores[0],), args.data_dir)
    os.sched_setaffinity(0, cores[1:] or cores)
    import torch

    from objective.data import load_resident, resolve_root
    from objective.timed_run import train_once

    torch.set_num_threads(1)
    data = load_resident(resolve_root(args.data_dir), torch.device("cpu"))
    service = Service()
    seconds: dict[str, list[float]] = {"alone": [], "beside": [], "one interpreter": []}
    asks: dict[str, int] = {"beside": 0, "one interpreter": 0}
    train_once(STAND_IN, data)  # warm this process's shapes too
    trainer.run(STAND_IN, 1e9)
    for _ in range(args.rounds):
        for _ in range(args.runs):
            seconds["alone"].append(trainer.run(STAND_IN, 1e9).seconds)
        with service:
            before = service.asks
            for _ in range(args.runs):
                seconds["beside"].append(trainer.run(STAND_IN, 1e9).seconds)
            asks["beside"] += service.asks - before
        os.sched_setaffinity(0, cores)  # the old design: a core for each thread, one interpreter lock
        with service:
            before = service.asks
            for _ in range(args.runs):
                seconds["one interpreter"].append(train_once(STAND_IN, data).seconds)
            asks["one interpreter"] += service.asks - before
        os.sched_setaffinity(0, cores[1:] or cores)
    trainer.close()
    alone = statistics.median(seconds["alone"])
    print(
        f"{time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} torch thread, stand-in "
        f"{STAND_IN.train_subset // STAND_IN.batch_size} steps of batch {STAND_IN.batch_size}; "
        f"{args.rounds} rounds x {args.runs} runs\n"
    )
    print("| the stand-in run | runs | median s | vs alone | service asks meanwhile |")
    print("|---|---|---|---|---|")
    for way, values in seconds.items():
        print(
            f"| {way} | {len(values)} | {statistics.median(values):.3f} | "
            f"{statistics.median(values) / alone:.3f}x | {asks.get(way, '-')} |"
        )


if __name__ == "__main__":
    main()
