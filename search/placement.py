"""Where timed runs go: the device, and the claim that keeps every other timed run off it
(search/device_lock.py), for the worker and for export's --verify alike. The GPUs are counted by
the training process (objective/trainer_process.py), so this process never imports torch."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from objective.errors import UserError
from objective.trainer_process import TrainingProcess
from search.device_lock import Claim, claim_cores, claim_device, claim_first_free

DEVICE_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(name: str) -> str:
    if not DEVICE_NAME.match(name):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return name


def place(device_name: str, threads: int | None, trainer: TrainingProcess, data_dir: str | None,
          shared: bool = False, wait: bool = False, keep_waiting: Callable[[], bool] = lambda: True,
          on_wait: Callable[[str], None] | None = None) -> Claim:
    """Claim `device_name` (auto, cpu, cuda, cuda:N) for this process's life and load MNIST onto it
    in `trainer`; `trainer.device` then names it.

    - auto on a GPU host: the first GPU no worker holds; while all are held, wait.
    - a named GPU: that one; busy is an error unless `wait`.
    - cpu (and auto without a GPU): a lease on `threads` cores (default: all this process may use),
      waiting until they are free; both processes are pinned to them and torch runs one thread
      each. Shared: every core, shared with other sharers, and `threads` torch threads.
    Raises DeviceBusy, or WaitAbandoned when `keep_waiting()` turns false during a wait.
    """
    check_device_name(device_name)
    gpus = trainer.gpus() if device_name != "cpu" else []
    if device_name.startswith("cuda"):
        index = int(device_name.partition(":")[2] or 0)
        if index >= len(gpus):
            raise UserError(f"device {device_name!r} asked for, but this machine has {len(gpus)} usable "
                            "CUDA GPU(s); use --device cpu" if not gpus else
                            f"device {device_name!r} does not exist: this machine has {len(gpus)} GPU(s)")
        key = gpus[index][0]
        claim = claim_device(key, shared, wait, f"cuda:{index}", keep_waiting, on_wait)
        trainer.load(f"cuda:{index}", threads, (), data_dir)
    elif device_name == "auto" and gpus:
        claim = claim_first_free([key for key, _ in gpus], [f"cuda:{i}" for i in range(len(gpus))], shared,
                                 keep_waiting, on_wait)
        trainer.load(f"cuda:{claim.index}", threads, (), data_dir)
    else:
        claim = claim_cores(threads, shared, keep_waiting=keep_waiting, on_wait=on_wait)
        if not claim.shared:
            os.sched_setaffinity(0, claim.cores)  # the service's own process keeps off other cores too
        trainer.load("cpu", threads or len(claim.cores), () if claim.shared else claim.cores, data_dir)
    return claim
