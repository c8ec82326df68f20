"""The thing being optimized: one honestly timed training run of a small MNIST CNN."""

from objective.config import ConfigError, TrainConfig, from_dict
from objective.data import DataError, Mnist, load_resident, resolve_root
from objective.objective import Objective, ObjectiveSettings, penalized_value
from objective.trainer import RunResult, fingerprint, resolve_device, train_once

__all__ = [
    "ConfigError", "DataError", "Mnist", "Objective", "ObjectiveSettings", "RunResult",
    "TrainConfig", "fingerprint", "from_dict", "load_resident", "penalized_value",
    "resolve_device", "resolve_root", "train_once",
]
