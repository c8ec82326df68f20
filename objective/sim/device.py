"""A simulated device: what one timed run of a config would give, without torch or MNIST.

    seconds  = (constant + per_step * steps + per_norm_step * steps * norm layers
                + MACs / macs_per_second + activations / activations_per_second) * clock noise
    accuracy = 1 - exp(f(config) + spread * z), z ~ N(0, 1) drawn from (config, seed), on all
               10,000 test images, then split into the two halves' (`AccuracyModel.halves`)

- `f` is a robust ridge regression of log(1 - accuracy) on features of the config (`features`),
  fitted by objective/sim/fit.py to real runs measured on this project's CPU
  (objective/sim/runs_cpu.csv); `spread` is the per-seed spread measured there. Without BatchNorm
  and past a learning rate, a run may collapse to one class, as some of those runs did. Accuracy
  does not depend on the device: the same config and seed give the same accuracy on every
  profile, and a fresh seed a fresh draw.
- The cost terms: a training step's Python and kernel launches (`per_step`), BatchNorm's extra ones,
  the multiply-adds of training (3x the forward pass) and of scoring the 10,000 test images, and
  the elements every step writes (pools, activations: memory traffic). The `cpu` profile's figures
  are fitted to the same runs; the GPU profiles' are assumptions from public figures
  (objective/sim/gpus.toml says which), to be replaced by measurements.
- Clock noise: a run-to-run spread (log-normal), a drift (a mean-reverting walk in time) and rare
  spikes; the `cpu` profile's as measured with the runs (fit.py), the GPUs' assumed (gpus.toml).
- `true_seconds` and `true_accuracy` are the noise-free truth, for judging a search (regret).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from objective.config import IMAGE_SIZE, TrainConfig
from objective.errors import UserError
from objective.result import RunResult

HERE = Path(__file__).resolve().parent
MODEL_FILE = HERE / "model.json"  # fitted by objective/sim/fit.py: accuracy, the cpu profile, noise
GPU_FILE = HERE / "gpus.toml"  # assumed GPU profiles
TRAIN_IMAGES = 60_000
TEST_IMAGES = 10_000
# Fields that change how fast a run is, never what it computes: not part of its accuracy's draw.
SPEED_ONLY = ("seed", "channels_last", "bf16_autocast", "eval_batch", "check_every")


@dataclass(frozen=True)
class Noise:
    spread: float  # run-to-run, log-normal sigma
    drift: float  # the slow walk's stationary sigma, in log seconds
    drift_minutes: float  # ... and its time scale
    spike_rate: float  # fraction of runs that spike
    spike_size: float  # median extra factor of a spike (1.0: twice as long)


@dataclass(frozen=True)
class Profile:
    name: str
    constant: float
    per_step: float
    per_norm_step: float
    macs_per_second: float
    activations_per_second: float
    noise: Noise

    def true_seconds(self, config: TrainConfig) -> float:
        """The noise-free seconds of one run of `config` (the module docstring's formula)."""
        work = cost_features(config)
        return (
            self.constant
            + self.per_step * work["steps"]
            + self.per_norm_step * work["norm_steps"]
            + work["macs"] / self.macs_per_second
            + work["activations"] / self.activations_per_second
        )


def train_count(config: TrainConfig) -> int:
    return min(config.train_subset, TRAIN_IMAGES) if config.train_subset else TRAIN_IMAGES


def total_steps(config: TrainConfig) -> int:
    """As objective/timed_run.py counts them."""
    return max(1, math.ceil(config.epochs * math.ceil(train_count(config) / config.batch_size)))


def forward_work(config: TrainConfig) -> tuple[float, float]:
    """Multiply-adds and written activation elements of one image's forward pass."""
    conv1 = IMAGE_SIZE - config.conv1_kernel + 1
    pool1 = conv1 // 2
    conv2 = pool1 - config.conv2_kernel + 1
    pool2 = conv2 // 2
    macs = (
        conv1**2 * config.conv1_width * config.conv1_kernel**2
        + conv2**2 * config.conv2_width * config.conv1_width * config.conv2_kernel**2
        + config.flat_features() * config.fc_width
        + config.fc_width * 10
    )
    activations = (
        conv1**2 * config.conv1_width
        + pool1**2 * config.conv1_width
        + conv2**2 * config.conv2_width
        + pool2**2 * config.conv2_width
        + config.fc_width
    )
    return float(macs), float(activations)


def cost_features(config: TrainConfig) -> dict[str, float]:
    """What a run's seconds are made of: steps (evaluation batches count a third: forward only),
    BatchNorm layer-steps, and the multiply-adds and activations of training (3x forward) and of
    scoring the test images."""
    macs, activations = forward_work(config)
    steps = total_steps(config)
    images = config.epochs * train_count(config)
    norm_layers = {"none": 0, "conv2": 1, "both": 2}[config.batch_norm]
    return {
        "steps": steps + math.ceil(TEST_IMAGES / config.eval_batch) / 3,
        "norm_steps": float(steps * norm_layers),
        "macs": 3 * images * macs + TEST_IMAGES * macs,
        "activations": 3 * images * activations + TEST_IMAGES * activations,
    }


def features(config: TrainConfig) -> list[float]:
    """The accuracy model's inputs, FEATURE_NAMES (objective/sim/fit.py fits one coefficient each):
    every knob on the scale it acts on, its square, and the interactions the recipe's tuning
    history names (lr with batch size, epochs, BatchNorm and width)."""
    lr, batch, epochs = math.log(config.lr), math.log(config.batch_size), math.log(config.epochs)
    widths = [math.log(config.conv1_width), math.log(config.conv2_width), math.log(config.fc_width)]
    beta2, decay = math.log(1.0 - config.beta2), math.log(config.final_div_factor)
    kernels = [float(config.conv1_kernel), float(config.conv2_kernel)]
    norm = float(config.batch_norm != "none")
    return [lr, lr * lr, batch, batch * batch, lr * batch, epochs, epochs * epochs, lr * epochs,
            config.beta1, beta2, config.pct_start, decay, *kernels, *widths,
            float(config.batch_norm == "conv2"), float(config.batch_norm == "both"), lr * norm,
            *(w * w for w in widths), *(k * k for k in kernels), config.beta1**2, beta2**2,
            config.pct_start**2, decay**2, lr * widths[1], epochs * batch]


FEATURE_NAMES = ["log lr", "log lr ^2", "log batch", "log batch ^2", "log lr * log batch", "log epochs",
                 "log epochs ^2", "log lr * log epochs", "beta1", "log(1 - beta2)", "pct_start",
                 "log final_div_factor", "conv1_kernel", "conv2_kernel", "log conv1_width",
                 "log conv2_width", "log fc_width", "batch_norm conv2", "batch_norm both",
                 "log lr * batch_norm", "log conv1_width ^2", "log conv2_width ^2", "log fc_width ^2",
                 "conv1_kernel ^2", "conv2_kernel ^2", "beta1 ^2", "log(1 - beta2) ^2", "pct_start ^2",
                 "log final_div_factor ^2", "log lr * log conv2_width", "log epochs * log batch"]


@dataclass(frozen=True)
class AccuracyModel:
    intercept: float
    coefficients: list[float]  # one per FEATURE_NAMES, on standardized features
    means: list[float]
    scales: list[float]
    spread: float  # per-seed sigma of log(1 - accuracy)
    floor: float  # the lowest error rate the model extrapolates to
    # Without BatchNorm, from this lr on a run may collapse to predicting one class (seen in the
    # runs: no NaN, the loss stuck), at this rate, to this accuracy.
    collapse_lr: float
    collapse_rate: float
    collapse_accuracy: float
    # The test images' two halves (objective/result.py), each its config's 10,000-image accuracy
    # plus: a shift both halves share for every config (+ on the selection half, - on the held-out),
    # the config's image luck on that half (drawn from the config alone, independent between the
    # halves and between configs: an upper bound, since similar configs miss similar images) and
    # the seed's (+ on one half, - on the other); fitted to runs scored on both (fit.py's fit_halves).
    half_shift: float
    half_config_sd: float
    half_seed_sd: float

    def collapse_probability(self, config: TrainConfig) -> float:
        return self.collapse_rate if config.batch_norm == "none" and config.lr >= self.collapse_lr else 0.0

    def log_error(self, config: TrainConfig) -> float:
        x = features(config)
        value = self.intercept + sum(
            c * (v - m) / s for c, v, m, s in zip(self.coefficients, x, self.means, self.scales, strict=True)
        )
        return max(value, math.log(self.floor))

    def true_accuracy(self, config: TrainConfig) -> float:
        """The mean over seeds (what a config "really" reaches on these test images)."""
        learned = 1.0 - math.exp(self.log_error(config) + self.spread**2 / 2)
        collapse = self.collapse_probability(config)
        return (1.0 - collapse) * learned + collapse * self.collapse_accuracy

    def accuracy(self, config: TrainConfig) -> float:
        """One seed's accuracy on all 10,000 test images: the same for the same config and seed."""
        draw = random.Random(_draw_key(config))
        z = draw.gauss(0.0, 1.0)
        if draw.random() < self.collapse_probability(config):
            return self.collapse_accuracy
        error = min(0.9, math.exp(self.log_error(config) + self.spread * z))
        return round((1.0 - error) * TEST_IMAGES) / TEST_IMAGES

    def halves(self, config: TrainConfig) -> tuple[float, float]:
        """One seed's accuracy on the selection half and on the held-out half (the comment above),
        each a whole number of the half's 5,000 images."""
        test = self.accuracy(config)
        by_config = random.Random(_draw_key(config, seeded=False))
        luck = [by_config.gauss(0.0, self.half_config_sd) for _ in range(2)]
        by_seed = random.Random(_draw_key(config) + 1).gauss(0.0, self.half_seed_sd)
        selection = test + self.half_shift + luck[0] + by_seed
        holdout = test - self.half_shift + luck[1] - by_seed
        return _of_half(selection), _of_half(holdout)


def _of_half(accuracy: float) -> float:
    half = TEST_IMAGES // 2
    return min(1.0, max(0.0, round(accuracy * half) / half))


def _draw_key(config: TrainConfig, seeded: bool = True) -> int:
    fields = {key: value for key, value in config.to_dict().items() if key not in SPEED_ONLY}
    text = json.dumps([fields, config.seed] if seeded else fields, sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


@cache
def model_document() -> dict[str, Any]:
    return json.loads(MODEL_FILE.read_text())


@cache
def gpu_document() -> dict[str, Any]:
    return tomllib.loads(GPU_FILE.read_text())


def profile_names() -> list[str]:
    return sorted([*(name for name in gpu_document() if name != "noise"), "cpu"])


def load_accuracy_model() -> AccuracyModel:
    return AccuracyModel(**model_document()["accuracy"])


def load_profile(name: str) -> Profile:
    """`cpu` (fitted) or a GPU profile of gpus.toml (assumed)."""
    document = model_document()
    if name == "cpu":
        fields, noise = dict(document["cpu"]), document["noise"]
    elif name in profile_names():
        fields = {key: value for key, value in gpu_document()[name].items() if not key.startswith("source")}
        noise = gpu_document()["noise"]
    else:
        raise UserError(f"unknown --simulate profile {name!r}; choose one of {', '.join(profile_names())}")
    return Profile(name=name, noise=Noise(**noise), **fields)


def model_version() -> str:
    """Short hash of the model and the profiles: a refit is a new device, never mixed with the old."""
    text = MODEL_FILE.read_bytes() + GPU_FILE.read_bytes()
    return hashlib.sha256(text).hexdigest()[:8]


class SimulatedDevice:
    """`run` stands in for objective.timed_run.train_once: it returns what the run would give and
    `sleep`s its simulated seconds (real or virtual: search/clock.py). `now` is the same clock's
    seconds, for the drift; `rng` draws the clock noise."""

    def __init__(
        self,
        profile: Profile,
        accuracy: AccuracyModel,
        sleep: Callable[[float], None],
        now: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.profile = profile
        self.accuracy = accuracy
        self.sleep = sleep
        self.now = now
        self.rng = rng
        self.fingerprint: dict[str, str | int] = {
            "device": f"simulated {profile.name}",
            "device_type": "simulated",
            "model": model_version(),
        }
        self._drift = rng.gauss(0.0, profile.noise.drift)
        self._drift_at = now()

    def clock_factor(self) -> float:
        """The noise on one run's seconds: drift (an Ornstein-Uhlenbeck walk), spread and spikes."""
        noise = self.profile.noise
        elapsed = max(0.0, self.now() - self._drift_at) / 60.0
        keep = math.exp(-elapsed / noise.drift_minutes) if noise.drift_minutes > 0 else 0.0
        self._drift = keep * self._drift + math.sqrt(1 - keep * keep) * self.rng.gauss(0.0, noise.drift)
        self._drift_at = self.now()
        factor = math.exp(self._drift + self.rng.gauss(0.0, noise.spread))
        if self.rng.random() < noise.spike_rate:
            factor *= 1.0 + noise.spike_size * self.rng.expovariate(1.0) / math.log(2)
        return factor

    def run(self, config: TrainConfig, time_limit: float = math.inf) -> RunResult:
        true_seconds = self.profile.true_seconds(config)
        seconds = true_seconds * self.clock_factor()
        steps = total_steps(config)
        over_time = seconds > time_limit
        if over_time:  # the real loop looks at the clock every check_every steps, and stops there
            per_step = seconds / steps
            checks = math.ceil(time_limit / per_step / config.check_every)
            steps = min(steps, checks * config.check_every)
            seconds = max(steps * per_step, math.nextafter(time_limit, math.inf))
        self.sleep(seconds)
        fixed = self.profile.constant * (seconds / true_seconds)
        selection, holdout = self.accuracy.halves(config)
        return RunResult(
            seed=config.seed,
            accuracy=selection,
            holdout_accuracy=holdout,
            seconds=seconds,
            train_seconds=max(0.0, seconds - fixed),
            steps=steps,
            diverged=False,
            over_time=over_time,
            fingerprint=dict(self.fingerprint),
        )
