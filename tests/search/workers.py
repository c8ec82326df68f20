"""Real `python -m search.worker` processes for tests: output read as it comes, so a test can wait
(with a deadline) for a line such as "trial 0 started" before it sends a signal."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "studies" / "smoke.toml"
# One torch thread per worker: several workers with torch's default (a thread per core) would
# oversubscribe a 2-core machine and every trial would take many times longer.
FAST = ["--device", "cpu", "--threads", "1", "--no-progress"]


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


class WorkerProcess:
    def __init__(self, args: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "search.worker", *args], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
