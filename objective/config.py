"""One training run's hyperparameters: the single source of truth, with the seed recipe as defaults."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objective.errors import UserError

IMAGE_SIZE = 28  # MNIST images are 28x28; every shape check is against this.


class ConfigError(UserError):
    """A configuration that cannot train; its message is one line meant for the user."""


@dataclass(frozen=True)
class TrainConfig:
    # Optimizer: Adam under a one-cycle schedule that peaks at `lr` (the seed recipe's).
    lr: float = 0.01
    beta1: float = 0.7
    beta2: float = 0.9
    batch_size: int = 256
    epochs: float = 1.0  # fractional epochs train a prefix of the last reshuffled epoch
    # The one-cycle schedule's shape, as torch's OneCycleLR names it (the seed recipe kept its
    # defaults): the fraction of steps spent warming up, the start lr as lr / div_factor, and the
    # final lr as the start lr / final_div_factor.
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    # Model: conv(k1) -> pool -> relu -> conv(k2) -> pool -> relu -> fc -> relu -> fc(10).
    conv1_kernel: int = 5
    conv2_kernel: int = 3
    conv1_width: int = 24
    conv2_width: int = 32
    fc_width: int = 256
    # BatchNorm after a conv's pool: "none" (the seed recipe), "conv2" (after the second only:
    # a 5x5 map, nearly free) or "both". Measured to lift one-epoch accuracy by ~0.1 points (docs/).
    batch_norm: str = "none"
    seed: int = 0
    # Speed knobs: they change how fast a run is, never what it computes (up to float rounding).
    channels_last: bool = True  # NHWC convolutions: measured faster on the CPU (docs/performance.md)
    # bf16 matmuls/convs under autocast. "auto" turns it on only where it was measured to pay: a
    # CPU with AMX matrix units. Without bf16 units it is emulated and an order of magnitude
    # slower (docs/performance.md), and on a GPU it is unmeasured. "on" and "off" force it.
    bf16_autocast: str = "auto"
    # Replay each training step as a CUDA graph, captured in the untimed warm-up (objective/graphed.py);
    # no effect on a CPU.
    cuda_graphs: bool = False
    eval_batch: int = 1000  # all 10k test images are scored; the batch only changes speed
    # Subset of the training set (the first N of the fixed shuffled order); 0 means all 60,000.
    train_subset: int = 0
    # How often (in steps) the loop stops to look at the loss and the clock. Each look is one host
    # sync on a GPU, so it is rare; between looks the loop never waits on the device.
    check_every: int = 50

    def __post_init__(self) -> None:
        _check_positive(self, ("lr", "batch_size", "epochs", "div_factor", "final_div_factor",
                               "conv1_kernel", "conv2_kernel", "conv1_width", "conv2_width",
                               "fc_width", "eval_batch", "check_every"))
        # inf passes "> 0" but cannot train (epochs=inf overflows)
        for name in ("lr", "epochs", "div_factor", "final_div_factor"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be finite, got {getattr(self, name)}")
        for name in ("beta1", "beta2", "pct_start"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"{name} must be in (0, 1), got {value}")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.train_subset < 0:
            raise ConfigError(f"train_subset must be >= 0 (0 = all), got {self.train_subset}")
        side = feature_side(self.conv1_kernel, self.conv2_kernel)
        if side < 1:
            raise ConfigError(
                f"conv1_kernel={self.conv1_kernel} and conv2_kernel={self.conv2_kernel} do not fit "
                f"a {IMAGE_SIZE}x{IMAGE_SIZE} image (nothing is left after the second pool); "
                "use smaller kernels"
            )

    def flat_features(self) -> int:
        return self.conv2_width * feature_side(self.conv1_kernel, self.conv2_kernel) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return from_dict({**self.to_dict(), **changes})


def feature_side(conv1_kernel: int, conv2_kernel: int) -> int:
    """Side of the feature map after conv(k1) -> pool 2 -> conv(k2) -> pool 2 on 28x28."""
    after_first = (IMAGE_SIZE - conv1_kernel + 1) // 2
    return (after_first - conv2_kernel + 1) // 2


def _check_positive(config: TrainConfig, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")


# Field name -> "float" | "int" | "bool" | "str" (annotations are strings under `from __future__`).
FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
_CASTS: dict[str, type] = {"float": float, "int": int, "bool": bool, "str": str}
CHOICES: dict[str, tuple[str, ...]] = {"bf16_autocast": ("auto", "on", "off"),
                                       "batch_norm": ("none", "conv2", "both")}
_SWITCH = {"true": "on", "1": "on", "false": "off", "0": "off"}  # true/false still say on/off


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config from plain values, rejecting unknown keys and wrong types with one line."""
    unknown = sorted(set(values) - set(FIELD_TYPES))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(FIELD_TYPES)}"
        )
    typed = {name: _coerce(name, value) for name, value in values.items()}
    return TrainConfig(**typed)


def _coerce(name: str, value: Any) -> Any:
    kind = _CASTS[FIELD_TYPES[name]]
    if kind is str:
        choices = CHOICES[name]
        text = str(value).lower() if isinstance(value, (str, bool)) else None  # str(True) is "True"
        text = _SWITCH.get(text or "", text)
        if text not in choices:
            raise ConfigError(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
        return text
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if kind is int:
        if not number.is_integer():
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        return int(number)
    return number


def parse_assignment(text: str) -> tuple[str, str]:
    """`key=value` from the command line."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    return key.strip(), value.strip()


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a config file: a JSON object of config fields, or an export with a `config` object."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from None
    except UnicodeDecodeError as error:  # a binary file: name it, like every other config error
        raise ConfigError(f"config file {path} is not UTF-8 text: {error.reason}") from None
    if isinstance(document, dict) and isinstance(document.get("config"), dict):
        document = document["config"]
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a JSON object of config fields")
    return document
