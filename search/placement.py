"""Where timed runs go: the device, and the claim that keeps every other timed run off it
(search/device_lock.py), for the worker and for export's --verify alike."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from objective.trainer import resolve_device
from search.device_lock import Claim, claim_cores, claim_device, claim_first_free


def gpu_key(device: torch.device) -> str:
    """The lock key: the GPU's UUID, which names one physical GPU whatever CUDA_VISIBLE_DEVICES
    renumbers it to in each process or container; the index where the UUID is unavailable."""
    try:
        return f"cuda-{torch.cuda.get_device_properties(device).uuid}"
    except (AttributeError, RuntimeError):
        return str(device)


def place(device_name: str, threads: int | None, shared: bool = False, wait: bool = False,
          keep_waiting: Callable[[], bool] = lambda: True,
          on_wait: Callable[[str], None] | None = None) -> tuple[torch.device, Claim]:
    """Resolve `device_name` (auto, cpu, cuda, cuda:N) and claim it for this process's life.

    - auto on a GPU host: the first GPU no worker holds; while all are held, wait.
    - a named GPU: that one; busy is an error unless `wait`.
    - cpu (and auto without a GPU): a lease on `threads` cores (default: all this process may use),
      waiting until they are free; the process is pinned to them and torch runs one thread each.
      Shared: every core, shared with other sharers, and `threads` torch threads.
    Raises DeviceBusy, or WaitAbandoned when `keep_waiting()` turns false during a wait.
    """
    if device_name == "auto" and torch.cuda.is_available():
        gpus = [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
        claim = claim_first_free([gpu_key(gpu) for gpu in gpus], [str(gpu) for gpu in gpus], shared,
                                 keep_waiting, on_wait)
        device = gpus[claim.index]
    else:
        device = resolve_device(device_name)
        if device.type == "cuda":
            claim = claim_device(gpu_key(device), shared, wait, str(device), keep_waiting, on_wait)
        else:
            claim = claim_cores(threads, shared, keep_waiting=keep_waiting, on_wait=on_wait)
            # Before torch starts its thread pool, which inherits the mask.
            os.sched_setaffinity(0, claim.cores)
            threads = threads or len(claim.cores)
    if threads is not None:
        torch.set_num_threads(threads)
    return device, claim
