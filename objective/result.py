"""One timed training run's outcome, as every device reports it: real (objective/timed_run.py, in
the training process) or simulated (objective/sim/device.py). Free of torch, so the service's own
process, which never trains, never imports it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from objective.config import TrainConfig


@dataclass(frozen=True)
class RunResult:
    seed: int
    # The 10,000 test images in two halves (docs/search.md, "Held-out images"): the search judges
    # by the even-indexed 5,000, and nothing selects on the odd-indexed 5,000, where the claim is.
    accuracy: float  # on the selection half
    holdout_accuracy: float  # on the held-out half
    seconds: float  # the timed span: model construction + training + evaluation
    train_seconds: float  # the training loop alone
    steps: int
    diverged: bool  # a NaN/inf loss stopped the run
    over_time: bool  # the time limit stopped the run
    fingerprint: dict[str, str | int] = field(default_factory=dict)

    @property
    def test_accuracy(self) -> float:
        """On all 10,000 test images (the halves are equal): the seed recipe's published figure's."""
        return (self.accuracy + self.holdout_accuracy) / 2

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "test_accuracy": self.test_accuracy}


# One timed run of a config under a time limit (seconds), on whatever device the caller holds.
Run = Callable[[TrainConfig, float], RunResult]


def describe_fingerprint(recorded: dict[str, object] | None) -> str:
    """A fingerprint in words: `NVIDIA H100 80GB HBM3 (cuda, torch 2.14.1, 16 threads, 16 cores)`."""
    if not recorded:
        return "(no fingerprint)"
    device = recorded.get("device", "unknown device")
    details = [str(recorded["device_type"])] if "device_type" in recorded else []
    if "torch" in recorded:
        details.append(f"torch {recorded['torch']}")
    if "threads" in recorded:
        details.append(f"{recorded['threads']} threads")
    if "cores" in recorded:
        details.append(f"{recorded['cores']} cores")
    return f"{device} ({', '.join(details)})" if details else str(device)
