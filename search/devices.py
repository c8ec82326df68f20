"""What a worker trains on: a real device, held through a training process, or a simulated one.

- Real (`--device`): a training process (objective/trainer_process.py) holds the device and MNIST
  and runs every timed run, so nothing of the service shares the timed run's interpreter; this
  process claims the device for it (search/placement.py) and never imports torch.
- Simulated (`--simulate PROFILE`): objective/sim/device.py in this process, sleeping each run's
  simulated seconds on the worker's clock (real, or virtual with --fast-forward). It holds
  nothing: simulated workers share no device to disturb.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from objective.result import Run
from objective.sim.device import SimulatedDevice, load_accuracy_model, load_profile
from objective.trainer_process import TrainingProcess
from search.clock import Clock
from search.device_lock import Claim
from search.placement import place


@dataclass
class Device:
    run: Run  # one timed run: (config, time limit) -> RunResult
    claim: Claim
    name: str  # as the study line and the trials' `worker` attribute say it
    fingerprint: dict[str, Any]
    simulated: bool
    close: Callable[[], None] = field(default=lambda: None)

    @property
    def threads(self) -> int | None:
        value = self.fingerprint.get("threads")
        return int(value) if value is not None else None


def open_real(
    device_name: str,
    threads: int | None,
    data_dir: str | None,
    shared: bool,
    wait: bool,
    keep_waiting: Callable[[], bool],
    on_wait: Callable[[str], None],
    interruptible: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> Device:
    """Start the training process, claim the device, load MNIST there. `interruptible`: the
    region in which a second signal may cut a run short (search/signals.py)."""
    trainer = TrainingProcess()
    try:
        with interruptible():
            claim = place(
                device_name,
                threads,
                trainer,
                data_dir,
                shared=shared,
                wait=wait,
                keep_waiting=keep_waiting,
                on_wait=on_wait,
            )
    except BaseException:
        trainer.kill()
        raise

    def run(config: Any, time_limit: float) -> Any:
        with interruptible():
            return trainer.run(config, time_limit)

    def close() -> None:
        trainer.close()
        claim.release()

    return Device(run, claim, trainer.device, trainer.fingerprint, simulated=False, close=close)


def open_simulated(profile_name: str, clock: Clock, seed: int | None) -> Device:
    """A simulated device whose clock noise draws from `seed` (None: fresh each start)."""
    device = SimulatedDevice(
        load_profile(profile_name),
        load_accuracy_model(),
        sleep=clock.sleep,
        now=clock.monotonic,
        rng=random.Random(seed),
    )
    name = str(device.fingerprint["device"])
    return Device(
        device.run, Claim(name, shared=True, handles=[]), name, dict(device.fingerprint), simulated=True
    )
