"""Study specs: a TOML file that names a study, its search space, objective settings and sampler.

    [study]      name, direction ("minimize"), n_trials (finished trials), minutes (wall-clock
                 budget from the study's creation); a worker stops at whichever comes first
    [objective]  accuracy_target, accuracy_margin, time_limit, limit_vs_baseline,
                 penalty_per_point, max_penalty_points, repeats, crown_seeds, claim_seeds,
                 accuracy_sd, clearly_sds, slower_margin, slower_runs, slower_margin_one_run,
                 yardstick_seeds, yardstick_every, yardstick_at_crown (ObjectiveSettings in
                 objective/optuna_objective.py, and objective/seeds.py, say what each does)
    [train]      fixed TrainConfig fields (epochs, train_subset, ...); the rest keep the seed's values
    [sampler]    name = "tpe" | "random" | "gp" | "cmaes" | "qmc", seed, history (at most this many
                 finished trials seen per ask: studies/sampler.py) and history_best (of which the
                 best, default 50), and the sampler's options
    [params.X]   type = "float" | "int" (low, high, log, step) or "categorical" (choices)
    [[start]]    start points: searched params set away from the baseline's, each enqueued once
                 after the baseline when the study is created

Everything is validated on load, before anything touches a database.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from objective.config import FIELD_TYPES, ConfigError, TrainConfig, from_dict
from objective.optuna_objective import ObjectiveSettings
from studies.sampler import BoundedHistory
from studies.spec_file import SpecError, read_spec_file

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SECTIONS = {"study", "objective", "train", "sampler", "params", "start"}
SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
}
# Parameters the search never varies: they are bookkeeping or speed-only, not recipe knobs.
NOT_SEARCHABLE = {"seed", "check_every", "eval_batch", "train_subset"}


@dataclass(frozen=True)
class StudySpec:
    name: str
    n_trials: int
    space: dict[str, BaseDistribution]
    base: TrainConfig
    objective: ObjectiveSettings
    sampler_name: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    direction: str = "minimize"
    sampler_seed: int | None = None
    source: str = ""
    minutes: float | None = None  # the study's wall-clock budget, from its creation
    history: int | None = None  # finished trials the sampler sees per ask (studies/sampler.py)
    history_best: int = 50  # ... of which the best trials, always in view
    starts: list[dict[str, Any]] = field(default_factory=list)  # [[start]] points, over the baseline

    def baseline_params(self) -> dict[str, Any]:
        """The seed recipe's values (as the [train] section leaves them) for every searched param."""
        return {name: getattr(self.base, name) for name in self.space}

    def start_params(self) -> list[dict[str, Any]]:
        """The baseline's params, then each [[start]] point's over them: enqueued in this order."""
        return [self.baseline_params()] + [{**self.baseline_params(), **start} for start in self.starts]

    def make_sampler(self, seed: int | None) -> optuna.samplers.BaseSampler:
        sampler = SAMPLERS[self.sampler_name](seed=seed, **self.sampler_options)
        return sampler if self.history is None else BoundedHistory(sampler, self.history, self.history_best)


def validate_study_name(name: object) -> str:
    if not isinstance(name, str) or not STUDY_NAME.match(name):
        raise SpecError(f"study name {name!r} is not allowed: use 1-128 letters, digits, '_', '.' or '-'")
    return name


def load_spec(path: str | Path) -> StudySpec:
    document = read_spec_file(path)
    try:
        return parse_spec(document, source=str(path))
    except SpecError as error:
        raise SpecError(f"{path}: {error}") from None


def parse_spec(document: Mapping[str, Any], source: str = "") -> StudySpec:
    _only(document, SECTIONS, "top level")
    study = _section(document, "study")
    _only(study, {"name", "direction", "n_trials", "minutes"}, "[study]")
    name = validate_study_name(study.get("name"))
    direction = study.get("direction", "minimize")
    if direction != "minimize":
        raise SpecError(f"[study] direction must be \"minimize\" (the value is seconds), got {direction!r}")
    n_trials = _integer(study.get("n_trials", 100), "[study] n_trials", minimum=1)
    minutes = study.get("minutes")
    if minutes is not None and not 0 < _number(minutes, "[study] minutes") < math.inf:
        raise SpecError(f"[study] minutes must be > 0, got {minutes!r}")

    objective = _objective(_section(document, "objective"))
    try:
        base = from_dict(dict(_section(document, "train")))
    except ConfigError as error:
        raise SpecError(f"[train] {error}") from None
    space = {key: _distribution(key, value) for key, value in _section(document, "params").items()}
    if not space:
        raise SpecError("[params] is empty: a study needs at least one parameter to search")
    _check_buildable(space, base)

    sampler = dict(_section(document, "sampler"))
    sampler_name = sampler.pop("name", "tpe")
    if sampler_name not in SAMPLERS:
        raise SpecError(f"[sampler] unknown sampler {sampler_name!r}; choose one of {', '.join(SAMPLERS)}")
    seed = sampler.pop("seed", None)
    if seed is not None:
        seed = _integer(seed, "[sampler] seed", minimum=0)
    history_best = _integer(sampler.pop("history_best", 50), "[sampler] history_best", minimum=1)
    history = sampler.pop("history", None)
    if history is not None:
        history = _integer(history, "[sampler] history", minimum=history_best)
    try:
        SAMPLERS[sampler_name](seed=seed, **sampler)  # the sampler itself judges its options
    except (TypeError, ValueError) as error:
        raise SpecError(f"[sampler] bad option for {sampler_name}: {error}") from None

    return StudySpec(name=name, n_trials=n_trials, space=space, base=base, objective=objective,
                     sampler_name=sampler_name, sampler_options=sampler, direction=direction,
                     sampler_seed=seed, source=source,
                     minutes=None if minutes is None else float(minutes), history=history,
                     history_best=history_best,
                     starts=_starts(document.get("start", []), space, base))


def _objective(section: Mapping[str, Any]) -> ObjectiveSettings:
    _only(section, {f.name for f in fields(ObjectiveSettings)}, "[objective]")
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key in ("repeats", "crown_seeds", "claim_seeds", "yardstick_seeds", "slower_runs"):
            values[key] = _integer(value, f"[objective] {key}", minimum=0 if key == "claim_seeds" else 1)
        elif key == "yardstick_at_crown":
            if not isinstance(value, bool):
                raise SpecError(f"[objective] yardstick_at_crown must be true or false, got {value!r}")
            values[key] = value
        else:
            values[key] = _number(value, f"[objective] {key}")
    try:
        return ObjectiveSettings(**values)
    except ValueError as error:
        raise SpecError(f"[objective] {error}") from None


def _starts(points: Any, space: Mapping[str, BaseDistribution], base: TrainConfig) -> list[dict[str, Any]]:
    """[[start]] tables: each sets searched params to values inside their ranges."""
    if not isinstance(points, list) or not all(isinstance(point, Mapping) for point in points):
        raise SpecError("[[start]] must be an array of tables (one [[start]] header per point)")
    for index, point in enumerate(points, 1):
        where = f"[[start]] #{index}"
        if not point:
            raise SpecError(f"{where} is empty: set at least one searched parameter")
        _only(point, set(space), where)
        for name, value in point.items():
            if not _contains(space[name], value):
                raise SpecError(f"{where} {name}={value!r} is outside [params.{name}]")
        _try_config(base, dict(point), where)
    return [dict(point) for point in points]


def _contains(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    assert isinstance(dist, FloatDistribution | IntDistribution)
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and dist.low <= value <= dist.high)


def _distribution(name: str, spec: Any) -> BaseDistribution:
    where = f"[params.{name}]"
    if name not in FIELD_TYPES or name in NOT_SEARCHABLE:
        searchable = sorted(set(FIELD_TYPES) - NOT_SEARCHABLE)
        raise SpecError(f"{where} unknown parameter {name!r}; searchable: {', '.join(searchable)}")
    if not isinstance(spec, Mapping):
        raise SpecError(f"{where} must be a table with a type")
    kind = spec.get("type")
    try:
        if kind == "categorical":
            _only(spec, {"type", "choices"}, where)
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise SpecError(f"{where} choices must be a non-empty list")
            return CategoricalDistribution(choices)
        if kind in ("float", "int"):
            _only(spec, {"type", "low", "high", "log", "step"}, where)
            if "low" not in spec or "high" not in spec:
                raise SpecError(f"{where} needs low and high")
            low, high = _number(spec["low"], f"{where} low"), _number(spec["high"], f"{where} high")
            if low > high:
                raise SpecError(f"{where} low ({low}) is greater than high ({high})")
            if kind == "float" and low == high:
                raise SpecError(f"{where} the range [{low}, {high}] is empty; "
                                "widen it or fix the value in [train]")
            log = spec.get("log", False)
            if not isinstance(log, bool):
                raise SpecError(f"{where} log must be true or false")
            step = spec.get("step")
            if kind == "int":
                if FIELD_TYPES[name] != "int":
                    raise SpecError(f"{where} {name} is a {FIELD_TYPES[name]}: use type = \"float\"")
                return IntDistribution(_integer(low, f"{where} low"), _integer(high, f"{where} high"),
                                       log=log, step=1 if step is None else _integer(step, f"{where} step"))
            float_step = None if step is None else _number(step, f"{where} step")
            return FloatDistribution(low, high, log=log, step=float_step)
    except ValueError as error:  # Optuna's own checks: log with low <= 0, step with log, ...
        if isinstance(error, SpecError):
            raise
        raise SpecError(f"{where} {error}") from None
    raise SpecError(f"{where} type must be \"float\", \"int\" or \"categorical\", got {kind!r}")


def _check_buildable(space: Mapping[str, BaseDistribution], base: TrainConfig) -> None:
    """Every value at a range's ends (and every choice) must give a config the model can build,
    and so must the largest kernels together."""
    extremes = {name: _extreme_values(dist) for name, dist in space.items()}
    for name, values in extremes.items():
        for value in values:
            _try_config(base, {name: value}, f"[params.{name}] value {value!r}")
    kernels = [name for name in ("conv1_kernel", "conv2_kernel") if name in extremes]
    combos = itertools.product(*(extremes[name] for name in kernels))
    for combo in combos:
        changes = dict(zip(kernels, combo, strict=True))
        _try_config(base, changes, "kernels " + ", ".join(f"{k}={v}" for k, v in changes.items()))
    for name, dist in space.items():
        value = getattr(base, name)
        if not _contains(dist, value):
            raise SpecError(f"[params.{name}] does not contain the baseline's {name}={value!r}; "
                            "widen it so the seed recipe can be enqueued as the baseline")


def _extreme_values(dist: BaseDistribution) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    assert isinstance(dist, FloatDistribution | IntDistribution)
    return [dist.low, dist.high]


def _try_config(base: TrainConfig, changes: dict[str, Any], what: str) -> None:
    try:
        base.replace(**changes)
    except ConfigError as error:
        raise SpecError(f"{what} cannot be trained: {error}") from None


def _section(document: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = document.get(name, {})
    if not isinstance(section, Mapping):
        raise SpecError(f"[{name}] must be a table")
    return section


def _only(section: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(section) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {known}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where} must be a number, got {value!r}")
    return float(value)


def _integer(value: Any, where: str, minimum: int | None = None) -> int:
    number = _number(value, where)
    if not number.is_integer():
        raise SpecError(f"{where} must be a whole number, got {value!r}")
    if minimum is not None and number < minimum:
        raise SpecError(f"{where} must be >= {minimum}, got {value!r}")
    return int(number)
