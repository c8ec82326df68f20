"""SIGINT/SIGTERM as a two-step stop: the first finishes the current trial, the second aborts it.

A trial killed halfway would stay RUNNING in the study until another worker's heartbeat check
fails it, and its seconds would be lost anyway; so the first signal (Ctrl-C, `docker stop`) only
asks the loop not to start another trial. The second one means "now": it raises
`WorkerInterrupted` in the main thread, but only while the worker is inside an `interruptible()`
region (training, loading data), never in the middle of a database write. Outside such a region
it is remembered, and the next region entered raises at once, so the worker can still record the
trial as FAILED before it exits.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger("search")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WorkerInterrupted(KeyboardInterrupt):
    """The second signal arrived while a trial was running. A KeyboardInterrupt, so that no
    `except Exception` on the way (ours, torch's, Optuna's) can swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"worker interrupted ({signal.Signals(signum).name})")
        self.signum = signum


class GracefulStop:
    def __init__(self) -> None:
        self.signum: int | None = None  # the latest signal received
        self.count = 0
        self._interruptible = False

    def install(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, self._handle)

    @property
    def requested(self) -> bool:
        """A signal arrived: start no new trial."""
        return self.count >= 1

    @property
    def aborted(self) -> bool:
        """A second signal arrived: give up the running trial."""
        return self.count >= 2

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by a signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + (self.signum or signal.SIGINT)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A region the second signal may cut short by raising WorkerInterrupted."""
        if self.aborted:
            raise WorkerInterrupted(self.signum or signal.SIGINT)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes; logging's handler lock is reentrant.
        self.count += 1
        self.signum = signum
        name = signal.Signals(signum).name
        if self.count == 1:
            log.warning("%s received: stopping after the current trial (send it again to abort the "
                        "trial)", name)
            return
        if self.count == 2:
            log.warning("%s received again: aborting the current trial", name)
        if self._interruptible:
            self._interruptible = False  # raise once; the cleanup that follows must not be cut short
            raise WorkerInterrupted(signum)
