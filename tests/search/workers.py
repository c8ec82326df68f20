"""Real `python -m search.worker` processes for tests: output read as it comes, so a test can wait
(with a deadline) for a line such as "trial 0 started" before it sends a signal. Also what tests of
processes and faults share: the exact trial accounting of a study, an environment without MNIST or
network, and a database host that never answers."""

from __future__ import annotations

import collections
import contextlib
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "studies" / "smoke.toml"
# One torch thread per worker, leasing one core of its own.
ONE_CORE = ["--device", "cpu", "--threads", "1", "--no-progress"]
# ... or on a lease shared with the other test workers: most tests run more workers than the machine
# has cores, and check what they store, not how fast they train.
FAST = [*ONE_CORE, "--share-device"]
FAST_HEARTBEAT = ["--heartbeat-interval", "1", "--grace-period", "3"]  # staleness within seconds
# 2,000 training images, for the tests that count trials rather than catch one in the middle: a
# yardstick and trials of about a second, which reach ~50-70 %, so the target is lowered to keep
# them feasible (export needs a feasible trial).
QUICK = {"train_subset = 6000": "train_subset = 2000", "accuracy_target = 0.90": "accuracy_target = 0.30"}
# 12,000 training images: a trial of seconds with one thread, long enough to catch in the middle.
SLOW = {"train_subset = 6000": "train_subset = 12000"}
STARTUP = 90  # seconds for a worker to import torch, load MNIST and start its first trial


def spec_file(folder: Path, **changes: str) -> Path:
    """smoke.toml with `old=new` replacements, as a file in `folder`."""
    text = SMOKE.read_text()
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "spec.toml"
    path.write_text(text)
    return path


def budget(n: int) -> dict[str, str]:
    return {"n_trials = 1000": f"n_trials = {n}"}


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


class WorkerProcess:
    def __init__(self, args: list[str], env: dict[str, str], cwd: Path = ROOT,
                 prefix: tuple[str, ...] = ()) -> None:
        """`prefix`: a command that runs the worker, such as `ip netns exec NS` (it must exec it, so
        that the pid is the worker's own)."""
        self.process = subprocess.Popen([*prefix, sys.executable, "-m", "search.worker", *args], cwd=cwd,
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pid = self.process.pid
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._new_lines: queue.Queue[str] = queue.Queue()
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [threading.Thread(target=self._read, args=(self.process.stdout, self._stdout, True)),
                         threading.Thread(target=self._read, args=(self.process.stderr, self._stderr, False))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str], sink: list[str], announce: bool) -> None:
        for line in stream:
            sink.append(line)
            if announce:
                self._new_lines.put(line)

    def wait_for(self, text: str, timeout: float) -> str:
        """The first stdout line from now on that contains `text`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._new_lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.process.poll() is not None and self._new_lines.empty():
                    break
                continue
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout} s; output:\n{self.output()}")

    def finish(self, timeout: float) -> Finished:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            for reader in self._readers:
                reader.join()
            raise AssertionError(f"worker {self.pid} still ran after {timeout} s:\n{self.output()}") from None
        for reader in self._readers:
            reader.join()
        return Finished(self.process.returncode, "".join(self._stdout), "".join(self._stderr))

    def output(self) -> str:
        return f"--- stdout\n{''.join(self._stdout)}--- stderr\n{''.join(self._stderr)}"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


# The `spawn_worker` fixture: spawn_worker(*args, cwd=ROOT, env=None) -> WorkerProcess.
Spawn = Callable[..., "WorkerProcess"]


def assert_nothing_left_running(study: optuna.Study) -> None:
    left = [(t.number, t.state.name) for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not left, f"trials left unfinished: {left}"


@dataclass(frozen=True)
class Accounting:
    """A study's trials by final state. `retries` maps each trial that was re-queued (its worker
    died) to the trial that re-ran its parameters."""

    complete: int
    pruned: int
    failed: int
    retries: dict[int, int]
    lost: list[int]  # re-queued trials whose re-run (or its own re-run) did not finish

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    def line(self) -> str:
        return (f"trials: {self.complete} COMPLETE, {self.pruned} PRUNED, {self.failed} FAILED "
                f"({len(self.retries)} re-queued and re-run), 0 RUNNING, lost {len(self.lost)}")


def account(study: optuna.Study) -> Accounting:
    """The exact accounting, asserted: trial numbers 0..n-1 each exactly once, nothing RUNNING or
    WAITING, every trial COMPLETE, PRUNED or FAILED."""
    trials = study.get_trials(deepcopy=False)
    assert_nothing_left_running(study)
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials))), f"trial numbers duplicated or missing: {numbers}"
    states = collections.Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] + states[TrialState.FAIL] == len(trials)
    retries = {t.system_attrs["retry_history"][-1]: t.number for t in trials
               if t.system_attrs.get("retry_history")}
    by_number = {t.number: t for t in trials}
    lost = []
    for number in retries:
        last = number
        while last in retries:
            last = retries[last]
        if by_number[last].state not in (TrialState.COMPLETE, TrialState.PRUNED):
            lost.append(number)
    return Accounting(states[TrialState.COMPLETE], states[TrialState.PRUNED], states[TrialState.FAIL],
                      retries, lost)


def offline_env(base: Mapping[str, str], folder: Path) -> dict[str, str]:
    """`base` for a process that finds no MNIST and reaches no network: an empty MNIST_DATA, its own
    tensor cache, and any download refused at once by a proxy on a closed loopback port (so the
    process fails the same with or without a network)."""
    env = {**base, "MNIST_DATA": str(folder / "no-mnist"), "FAST_MNIST_CACHE": str(folder / "cache")}
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = "http://127.0.0.1:9"
    for name in ("no_proxy", "NO_PROXY"):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def silent_server(accepted: list[socket.socket] | None = None) -> Iterator[int]:
    """A loopback port that accepts connections and never says a word: a database host that is
    'up' but never answers, which only a connect timeout can end. `accepted`: a list that gets
    each connection it accepted (closed once the server is)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted = [] if accepted is None else accepted
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join()
        for connection in [*accepted, listener]:
            connection.close()


class StandIn:
    """A stand-in objective in the steps search/loop.py takes: `train(trial)` is the training, on
    the main thread, returning the value; `record(trial, value)`, if given, writes after it, where
    the real objective writes its attributes."""

    def __init__(self, train: Callable[[optuna.Trial], float],
                 record: Callable[[optuna.Trial, float], None] | None = None) -> None:
        self.train = train
        self.write = record

    def plan(self, trial: optuna.Trial) -> optuna.Trial:
        return trial

    def train_seeds(self, trial: optuna.Trial) -> float:
        return self.train(trial)

    def record(self, trial: optuna.Trial, value: float) -> float:
        if self.write is not None:
            self.write(trial, value)
        return value
