"""One worker per GPU on a host: an advisory file lock keyed by the device.

A trial's value is wall seconds, so two workers on one GPU would slow each other down and make
both of their timings worthless. Each GPU worker therefore holds `flock` on a per-device file for
its whole life. The kernel drops the lock when the process dies, however it dies, so a crashed
worker never leaves a stale lock behind (unlike a pid file).

`--share-device` takes the lock shared instead of exclusive: sharers coexist with each other, but
never with an exclusive worker, so a worker that did not opt in to sharing is never timed on a
busy GPU. CPU workers take no lock: they share the cores and record their thread count in the
trial's fingerprint instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from objective.errors import UserError

# Host-wide, not per user: two users' workers on one GPU disturb each other's timings just the same.
DEFAULT_LOCK_DIR = Path("/tmp/fast-mnist-locks")
LOCK_DIR_ENV = "FAST_MNIST_LOCK_DIR"


class DeviceBusy(UserError):
    """Another worker holds the device; the message says who and what to do instead."""


@dataclass
class DeviceClaim:
    key: str
    path: Path
    shared: bool
    handle: IO[str]  # the open file carries the lock; closing it (or dying) releases it

    def release(self) -> None:
        self.handle.close()


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)


def lock_path(key: str) -> Path:
    """The lock file for a device key such as 'cuda:0' or 'cuda-GPU-8f1c...'."""
    return lock_dir() / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".lock")


def claim_device(key: str, shared: bool = False, wait: bool = False, label: str | None = None,
                 keep_waiting: Callable[[], bool] = lambda: True,
                 on_wait: Callable[[str], None] | None = None) -> DeviceClaim:
    """Lock `key` for this process (shared or exclusive); `label` names the device in messages.
    Raises DeviceBusy when another worker holds it, unless `wait`: then poll until it is free or
    `keep_waiting()` turns false. Polling rather than a blocking flock keeps the wait
    interruptible by the worker's signal handling."""
    label = label or key
    path = lock_path(key)
    handle = _open_lock_file(path)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    announced = False
    while True:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = _holders(path)
            if not wait or not keep_waiting():
                handle.close()
                raise DeviceBusy(_busy_message(label, holder, shared)) from None
            if on_wait is not None and not announced:
                on_wait(f"device {label} is in use by {holder}; waiting for it to be free")
                announced = True
            time.sleep(1.0)
    _record_holder(handle, shared)
    return DeviceClaim(key=key, path=path, shared=shared, handle=handle)


def _open_lock_file(path: Path) -> IO[str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # only the creator may chmod; others find it done
            path.parent.chmod(0o1777)  # like /tmp: every user's workers can create lock files
        # "a+" never truncates: another worker's pid line must survive our failed attempt.
        handle = open(path, "a+")  # noqa: SIM115 - the handle outlives this function by design
        with contextlib.suppress(OSError):
            path.chmod(0o666)
        return handle
    except OSError as error:
        raise DeviceBusy(f"cannot create the device lock {path}: {error.strerror or error}; "
                         f"set {LOCK_DIR_ENV} to a writable folder") from None


def _record_holder(handle: IO[str], shared: bool) -> None:
    # Best effort, for the message a later worker prints; the lock itself is what counts.
    with contextlib.suppress(OSError):
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}{' (shared)' if shared else ''}\n")
        handle.flush()


def _holders(path: Path) -> str:
    try:
        last = path.read_text().strip()
    except OSError:
        last = ""
    return f"another worker ({last})" if last else "another worker"


def _busy_message(label: str, holder: str, shared: bool) -> str:
    if shared:
        return (f"device {label} is held exclusively by {holder}; stop it, pick another --device, "
                "or pass --wait-device to queue for it")
    return (f"device {label} is in use by {holder}; two workers on one GPU spoil each other's timings. "
            "Stop it, pick another --device, pass --wait-device to queue for it, or pass "
            "--share-device to every worker that may share it")
