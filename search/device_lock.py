"""Host-wide claims on what a timing depends on: a GPU, or CPU cores.

A trial's value is wall seconds, so two trials on one GPU, or on the same cores, slow each other
down and make both timings worthless. A worker therefore holds `flock` on one file per GPU, or
per CPU core, for its whole life. The kernel drops a lock when its process dies, however it dies,
so a crashed worker never leaves a stale claim behind (unlike a pid file). The files are named
by the GPU's UUID and by the core's number as the kernel counts it, which every process and
container of the host agrees on; compose shares the folder ($FAST_MNIST_LOCK_DIR) as a volume.

- A named GPU (`claim_device`): busy is an error, or a wait with --wait-device.
- `--device auto` on a GPU host (`claim_first_free`): the first GPU no worker holds, else a wait.
- CPU (`claim_cores`): a lease on every core the process may use, or on --threads of them; the
  worker pins itself to the cores it got. Too few free cores means a wait, never sharing: N CPU
  workers started with no flags run one at a time, N with --threads 1 one per core. A shared
  lease covers every core and pins nothing: sharers are spread by the OS's scheduler.

`shared` (--share-device) takes the locks shared: sharers coexist with each other, but never with
an exclusive holder, so a worker that did not opt in to sharing is never timed on a busy device.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from objective.errors import UserError

# Host-wide, not per user: two users' workers on one GPU disturb each other's timings just the same.
DEFAULT_LOCK_DIR = Path("/tmp/fast-mnist-locks")
LOCK_DIR_ENV = "FAST_MNIST_LOCK_DIR"
POLL_SECONDS = 1.0  # polling, not a blocking flock, keeps a wait interruptible by the worker's signals


class DeviceBusy(UserError):
    """Another worker holds the device; the message says who and what to do instead."""


class WaitAbandoned(Exception):
    """The worker was asked to stop while it waited for a device."""


@dataclass
class Claim:
    label: str  # what is held, in words: "cuda:1", "cores 0-3"
    shared: bool
    handles: list[IO[str]]  # the open files carry the locks; closing them (or dying) releases them
    cores: tuple[int, ...] = ()  # for a CPU lease: the cores to pin to
    index: int = 0  # for claim_first_free: which of the candidates

    def release(self) -> None:
        for handle in self.handles:
            handle.close()


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)


def lock_path(key: str) -> Path:
    """The lock file for a key such as 'cuda:0', 'cuda-GPU-8f1c...' or 'cpu-3'."""
    return lock_dir() / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".lock")


def claim_device(key: str, shared: bool = False, wait: bool = False, label: str | None = None,
                 keep_waiting: Callable[[], bool] = lambda: True,
                 on_wait: Callable[[str], None] | None = None) -> Claim:
    """Lock `key`, shared or exclusive; `label` names the device in messages. Raises DeviceBusy
    when another worker holds it, unless `wait`: then poll until it is free."""
    label = label or key

    def attempt() -> Claim | None:
        handle = _try_lock(key, shared)
        return None if handle is None else Claim(label, shared, [handle])

    return _poll(attempt, wait, keep_waiting, on_wait,
                 busy=lambda: f"device {label} is in use by {_holder(key)}",
                 advice=_busy_advice(shared))


def claim_first_free(keys: Sequence[str], labels: Sequence[str], shared: bool = False,
                     keep_waiting: Callable[[], bool] = lambda: True,
                     on_wait: Callable[[str], None] | None = None) -> Claim:
    """Lock the first of `keys` that no worker holds (`Claim.index` says which), waiting while
    every one is held: a worker beyond the last GPU queues instead of sharing one."""

    def attempt() -> Claim | None:
        for index, key in enumerate(keys):
            if (handle := _try_lock(key, shared)) is not None:
                return Claim(labels[index], shared, [handle], index=index)
        return None

    def busy() -> str:
        held = "; ".join(f"{label} by {_holder(key)}" for key, label in zip(keys, labels, strict=True))
        return f"every GPU is in use ({held})"

    return _poll(attempt, True, keep_waiting, on_wait, busy=busy, advice="")


def claim_cores(count: int | None, shared: bool = False, cores: Sequence[int] | None = None,
                keep_waiting: Callable[[], bool] = lambda: True,
                on_wait: Callable[[str], None] | None = None) -> Claim:
    """Lease `count` of `cores` (default: all of them; `cores` defaults to those this process may
    run on), waiting until that many are free. All or nothing per attempt, so two workers that
    each got some never hold on to them and wait for each other. A shared lease takes every core,
    shared: sharers float over all of them as the OS schedules them, and keep exclusive leases out."""
    available = sorted(os.sched_getaffinity(0) if cores is None else cores)
    wanted = count or len(available)
    if wanted > len(available):
        raise DeviceBusy(f"--threads {wanted} asks for more cores than this process may use "
                         f"({len(available)}: {core_list(available)}); pass --threads {len(available)} "
                         "or fewer")
    if shared:
        wanted = len(available)

    def attempt() -> Claim | None:
        held: list[tuple[int, IO[str]]] = []
        for core in available:
            if (handle := _try_lock(f"cpu-{core}", shared)) is not None:
                held.append((core, handle))
                if len(held) == wanted:
                    got = tuple(sorted(core for core, _ in held))
                    return Claim(cores_label(got), shared, [h for _, h in held], cores=got)
        for _, handle in held:
            handle.close()
        return None

    def busy() -> str:
        holders = sorted({_holder(f"cpu-{core}") for core in available})
        return (f"{wanted} of cores {core_list(available)} wanted, fewer are free (held by "
                f"{'; '.join(holders)})")

    return _poll(attempt, True, keep_waiting, on_wait, busy=busy, advice="")


def cores_label(cores: Sequence[int]) -> str:
    """What a CPU lease holds, in words: 'core 3', 'cores 0-1'."""
    return f"core{'s' if len(cores) > 1 else ''} {core_list(cores)}"


def core_list(cores: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5', as taskset and /proc write it."""
    runs: list[list[int]] = []
    for core in sorted(cores):
        if runs and core == runs[-1][-1] + 1:
            runs[-1].append(core)
        else:
            runs.append([core])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def _poll(attempt: Callable[[], Claim | None], wait: bool, keep_waiting: Callable[[], bool],
          on_wait: Callable[[str], None] | None, busy: Callable[[], str], advice: str) -> Claim:
    announced = False
    while (claim := attempt()) is None:
        if not wait:
            raise DeviceBusy(f"{busy()}; {advice}")
        if not keep_waiting():
            raise WaitAbandoned(busy())
        if on_wait is not None and not announced:
            on_wait(f"{busy()}; waiting")
            announced = True
        time.sleep(POLL_SECONDS * random.uniform(0.5, 1.5))  # jitter: two waiters never retry in step
    return claim


def _try_lock(key: str, shared: bool) -> IO[str] | None:
    handle = _open_lock_file(lock_path(key))
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    # Best effort, for the message a later worker prints; the lock itself is what counts.
    with contextlib.suppress(OSError):
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}{' (shared)' if shared else ''}\n")
        handle.flush()
    return handle


def _open_lock_file(path: Path) -> IO[str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # only the creator may chmod; others find it done
            path.parent.chmod(0o1777)  # like /tmp: every user's workers can create lock files
        # "a+" never truncates: the holder's pid line must survive our failed attempt.
        handle = open(path, "a+")  # noqa: SIM115 - the handle outlives this function by design
        with contextlib.suppress(OSError):
            path.chmod(0o666)
        return handle
    except OSError as error:
        raise DeviceBusy(f"cannot create the lock file {path}: {error.strerror or error}; "
                         f"set {LOCK_DIR_ENV} to a writable folder") from None


def _holder(key: str) -> str:
    try:
        last = lock_path(key).read_text().strip()
    except OSError:
        last = ""
    return f"another worker ({last})" if last else "another worker"


def _busy_advice(shared: bool) -> str:
    if shared:
        return "it is held exclusively; stop that worker, pick another --device, or pass --wait-device"
    return ("two workers on one GPU spoil each other's timings. Stop it, pick another --device, pass "
            "--wait-device to queue for it, or pass --share-device to every worker that may share it")
