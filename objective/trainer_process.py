"""The training process: the one interpreter where timed runs happen.

A GPU run of this network is bound by Python launching kernels, so anything else in its interpreter
(the sampler, the storage, heartbeats, --prefetch's thread) would take the interpreter lock from
the loop being timed and slow it. So the worker's own process never trains: it starts one training
process, which imports torch, holds the device and MNIST, and runs one timed run per request
(objective/timed_run.py). The two talk over a socket pair, one pickled message each way per request:

    ("gpus",)                             -> ("gpus", [(lock key, name), ...])   the GPUs it sees
    ("load", device, threads, cores, dir) -> ("loaded", device, fingerprint)     MNIST onto it
    ("run", config, time_limit)           -> ("result", RunResult)
    and to any request, ("user_error", message) or ("error", exception type, message).

The process ignores SIGINT and SIGTERM (the worker decides what a signal means, and a Ctrl-C
reaches the whole process group) and dies with the worker (PR_SET_PDEATHSIG), so it never trains
on a device whose claim died with its worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any

from objective.config import TrainConfig
from objective.errors import UserError, first_line
from objective.result import RunResult

PR_SET_PDEATHSIG = 1  # prctl(2)


class TrainingFailed(RuntimeError):
    """A run raised in the training process; `kind` is the exception's type there."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class TrainingProcessDied(RuntimeError):
    """The training process exited mid-request (killed, out of memory, a crash in a kernel)."""


class TrainingProcess:
    """The worker's side: start, load, run, close. A process that died is started again (and its
    device loaded again) at the next run, so one crash fails one trial, not the worker."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None
        self._loaded: tuple[Any, ...] | None = None  # the last load request, to repeat after a restart
        self.device = ""
        self.fingerprint: dict[str, Any] = {}
        self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "objective.trainer_process", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._connection = Connection(ours.detach())

    def _request(self, *message: Any) -> tuple[Any, ...]:
        assert self._connection is not None and self._process is not None
        try:
            self._connection.send(message)
            reply = self._connection.recv()
        except (EOFError, OSError):
            code = self._process.wait()
            self._forget()
            raise TrainingProcessDied(
                f"the training process exited with code {code} during "
                f"{message[0]!r}; a new one starts for the next run"
            ) from None
        except BaseException:  # a second signal mid-run: the process is mid-run, so it goes
            self.kill()
            raise
        if reply[0] == "user_error":
            raise UserError(reply[1])
        if reply[0] == "error":
            raise TrainingFailed(reply[1], reply[2])
        return reply

    def gpus(self) -> list[tuple[str, str]]:
        """(lock key, name) of every GPU the training process sees; none on a CPU-only host."""
        return self._request("gpus")[1]

    def load(self, device: str, threads: int | None, cores: tuple[int, ...], data_dir: str | None) -> str:
        """Put MNIST on `device` (pinned to `cores` and `threads` torch threads on the CPU);
        returns the device as torch names it."""
        self._loaded = (device, threads, cores, data_dir)
        _, self.device, self.fingerprint = self._request("load", *self._loaded)
        return self.device

    def run(self, config: TrainConfig, time_limit: float) -> RunResult:
        """One timed run (objective.timed_run.train_once) in the training process."""
        if self._process is None:
            self._start()
            if self._loaded is not None:
                self._request("load", *self._loaded)
        return self._request("run", config.to_dict(), time_limit)[1]

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self._forget()

    def close(self) -> None:
        if self._connection is not None and self._process is not None:
            self._connection.close()  # end of file: the process leaves its loop and exits
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._forget()

    def _forget(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.close()
        self._process, self._connection = None, None


# -- the training process itself -----------------------------------------------------------------


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the worker died before the line above took effect
        os._exit(1)


class _Server:
    """Runs in the training process; torch is imported here only."""

    def __init__(self) -> None:
        self.data: Any = None

    def handle(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        import torch

        from objective import timed_run

        kind, *args = request
        if kind == "gpus":
            gpus = [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
            return "gpus", [(_gpu_key(torch, gpu), torch.cuda.get_device_name(gpu)) for gpu in gpus]
        if kind == "load":
            from objective.data import load_resident, resolve_root

            name, threads, cores, data_dir = args
            device = timed_run.resolve_device(name)
            if cores:
                os.sched_setaffinity(0, cores)  # before torch starts its pool, which inherits it
            if threads is not None:
                torch.set_num_threads(threads)
            self.data = load_resident(resolve_root(data_dir), device)
            return "loaded", str(device), timed_run.fingerprint(device)
        if kind == "run":
            config, time_limit = args
            return "result", timed_run.train_once(TrainConfig(**config), self.data, time_limit)
        raise ValueError(f"unknown request {kind!r}")


def _gpu_key(torch: Any, device: Any) -> str:
    """The lock key: the GPU's UUID, which names one physical GPU whatever CUDA_VISIBLE_DEVICES
    renumbers it to in each process or container; the index where the UUID is unavailable."""
    try:
        return f"cuda-{torch.cuda.get_device_properties(device).uuid}"
    except (AttributeError, RuntimeError):
        return str(device)


def _free_memory() -> None:
    """Give back what a failed run left allocated (above all after an out-of-memory error), so the
    next run starts from the same memory state as every other. Only after a failure: a full
    collection in an interpreter holding torch takes tens of milliseconds, every run."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def serve(connection: Connection) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    _die_with_parent()
    server = _Server()
    while True:
        try:
            request = connection.recv()
        except (EOFError, OSError):  # the worker closed its end, or died
            return
        try:
            reply = server.handle(request)
        except UserError as error:
            reply = ("user_error", str(error))
        except Exception as error:  # the worker fails the trial with this reason
            reply = ("error", type(error).__name__, first_line(error))
        if reply[0] == "error" and request[0] == "run":
            _free_memory()  # after the except block: the exception no longer pins the run's tensors
        try:
            connection.send(reply)
        except (pickle.PicklingError, TypeError) as error:
            connection.send(("error", type(error).__name__, first_line(error)))


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
