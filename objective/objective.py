"""The Optuna objective: suggest a config, train it seed by seed on resident data, return its
penalized wall time.

A trial is feasible when it dominates the seed recipe: its mean accuracy `acc` over the seeds it
ran (objective/seeds.py decides how many) reaches the bar (target + margin), and its median timed
seconds `secs` are at most the recipe's own time on this device (the worker's yardstick). Both are
Optuna 5 constraints, each <= 0 when met: `accuracy_points_short` (the bar minus `acc`, in points)
and `slower_than_recipe` (`secs` over the recipe's time, minus 1). TPE and GP rank infeasible
trials by their sum, so a fast near miss ranks far above a slow accurate config or a slow failure.

Value, with `ceiling` the recipe's time (the spec's `time_limit` until it is measured), which is
also the most a feasible trial can take:
- feasible: `secs`;
- infeasible: `max(secs, ceiling) + penalty_per_point * min(points short, max_penalty_points) * ceiling`.
So every infeasible value sits above every feasible one (the dashboard's "best trial", which goes
by value alone, is a feasible one), a near miss sits just above them, and no value passes
`time limit + penalty_per_point * max_penalty_points * ceiling`: one divergent run cannot set the
scale of the whole study.
A run stopped by the time limit (a multiple of the recipe's time here) leaves the trial PRUNED,
with the value of its finished seeds as its last intermediate value.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial

from objective.config import TrainConfig
from objective.result import Run, RunResult
from objective.seeds import SeedRules, mean_accuracy, median_seconds, stop_reason

METRIC_NAME = "penalized seconds"  # the study's objective, as the dashboard names it
# Seconds between two timings of the seed recipe by one worker: ~1 % of a CPU search's time.
YARDSTICK_EVERY = 300.0
# What "passes" means, for the search, export and verification: a study records its own target,
# and this is the default where none is recorded.
ACCURACY_TARGET = 0.99


@dataclass(frozen=True)
class ObjectiveSettings:
    accuracy_target: float = ACCURACY_TARGET
    # The search asks for target + margin: a config whose mean sits on the target passes a fresh
    # seed only half the time, so the margin buys reliability for the exported config.
    accuracy_margin: float = 0.0
    time_limit: float = 120.0  # seconds; a run past it is stopped
    limit_vs_baseline: float = 3.0  # ... and so is a run past this multiple of the seed recipe's time
    # An infeasible trial pays this many ceilings (the recipe's time) per point below the bar,
    penalty_per_point: float = 1.0
    max_penalty_points: float = 1.0  # ... for at most this many points: the value's bound
    repeats: int = 1  # seeds that decide a trial (objective/seeds.py)
    crown_seeds: int = 1  # seeds a would-be best trial must hold on first (the crown guard)
    accuracy_sd: float = 0.0007  # one seed's accuracy spread, for "clearly infeasible"
    slower_margin: float = 0.1  # "clearly slower than the best": the clock's noise, and then some

    @property
    def required_accuracy(self) -> float:
        return round(self.accuracy_target + self.accuracy_margin, 12)  # 0.99 + 0.001 is 0.991

    def seed_rules(self) -> SeedRules:
        return SeedRules(bar=self.required_accuracy, repeats=self.repeats, crown_seeds=self.crown_seeds,
                         accuracy_sd=self.accuracy_sd, slower_margin=self.slower_margin)

    def __post_init__(self) -> None:
        if not 0.0 < self.accuracy_target <= 1.0:
            raise ValueError(f"accuracy_target must be in (0, 1], got {self.accuracy_target}")
        if not 0.0 <= self.accuracy_margin < 1.0 - self.accuracy_target + 1e-12:
            raise ValueError(f"accuracy_margin must be in [0, 1 - accuracy_target], "
                             f"got {self.accuracy_margin}")
        for name in ("time_limit", "limit_vs_baseline", "penalty_per_point", "max_penalty_points",
                     "accuracy_sd"):
            if not 0.0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)}")
        if self.repeats < 1 or self.crown_seeds < 1:
            raise ValueError(f"repeats and crown_seeds must be >= 1, got {self.repeats} and "
                             f"{self.crown_seeds}")
        if not 0.0 <= self.slower_margin < math.inf:
            raise ValueError(f"slower_margin must be >= 0 and finite, got {self.slower_margin}")


def penalized_value(accuracy: float, seconds: float, settings: ObjectiveSettings,
                    ceiling: float | None = None) -> float:
    """The value of a trial (module docstring). `ceiling`: the seed recipe's seconds on this
    device; None before it is measured, and then the spec's time_limit is the ceiling. A trial
    slower than the ceiling is infeasible even at full accuracy."""
    ceiling = settings.time_limit if ceiling is None else ceiling
    points_short = 100.0 * (settings.required_accuracy - accuracy)
    if points_short <= 0.0 and seconds <= ceiling:
        return seconds
    penalty = settings.penalty_per_point * min(max(points_short, 0.0), settings.max_penalty_points)
    return max(min(seconds, settings.time_limit), ceiling) + penalty * ceiling


def suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> object:
    """Ask `trial` for `name` through the public suggest API matching `distribution`."""
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(name, distribution.low, distribution.high,
                                   step=distribution.step, log=distribution.log)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(name, distribution.low, distribution.high,
                                 step=distribution.step, log=distribution.log)
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, list(distribution.choices))  # type: ignore[arg-type]
    raise TypeError(f"unsupported distribution for {name}: {distribution!r}")


def is_feasible(trial: FrozenTrial) -> bool:
    """Optuna's own rule for the constraints `Objective.constraints` sets: feasible when every
    constraint is <= 0 (a trial without constraints is feasible)."""
    return all(value <= 0.0 for value in trial.constraints.values())


def best_feasible_value(study: optuna.Study) -> float | None:
    """The study's best feasible value, read from the shared storage (so across workers)."""
    try:
        return study.best_value
    except ValueError:  # no complete, feasible trial yet
        return None


@dataclass(frozen=True)
class Planned:
    """A trial's config and the best value it has to beat, fixed before it trains."""
    config: TrainConfig
    best: float | None


@dataclass(frozen=True)
class Trained:
    """A trial's runs, one per seed, and why it stopped after them."""
    runs: list[RunResult]
    stopped: str
    time_limit: float

    @property
    def accuracy(self) -> float:
        return mean_accuracy(self.runs)

    @property
    def seconds(self) -> float:
        return median_seconds(self.runs)

    @property
    def diverged(self) -> bool:
        return any(run.diverged for run in self.runs)

    @property
    def over_time(self) -> bool:
        return any(run.over_time for run in self.runs) and not self.diverged


SetConstraints = Callable[[optuna.Trial, Mapping[str, float]], None]


def set_each_constraint(trial: optuna.Trial, constraints: Mapping[str, float]) -> None:
    """Optuna's public way; the worker passes a faster one (studies/optuna_internals.py)."""
    for name, value in constraints.items():
        trial.set_constraint(name, value)


class Objective:
    """An Optuna objective (callable on a trial) whose runs go to `run`: one timed run of a config
    on the device the caller holds (a training process, or a simulated device).

    A call is three steps, which search/loop.py also takes one by one: `plan` (suggest the config;
    storage), `train_seeds` (train; no storage, so --prefetch can do the storage work of the trials
    around it meanwhile) and `record` (the trial's attributes and constraints; storage). `clock`:
    seconds that only go forward (a simulated fleet passes its virtual clock)."""

    def __init__(self, space: Mapping[str, BaseDistribution], base: TrainConfig,
                 settings: ObjectiveSettings, run: Run, clock: Callable[[], float] = time.monotonic,
                 set_constraints: SetConstraints = set_each_constraint) -> None:
        self.space = dict(space)
        self.base = base
        self.settings = settings
        self.run = run
        self.clock = clock
        self.set_constraints = set_constraints
        self.baseline_seconds: float | None = None  # the yardstick: `measure_baseline`
        self.baseline_measured_at = -math.inf  # self.clock() at that measurement
        # The best of this worker's own trials: a prepared trial read the study's best before
        # the trial in front of it had finished.
        self.own_best = math.inf

    def __call__(self, trial: optuna.Trial) -> float:
        return self.record(trial, self.train_seeds(self.plan(trial)))

    def measure_baseline(self) -> float:
        """Time the seed recipe (the spec's base config) once on this device, outside any trial.
        Its seconds are the time to beat until a faster feasible trial exists, and set the run
        time limit and each trial's `vs_baseline`. `train_seeds` re-measures it every YARDSTICK_EVERY
        seconds, so a load that came and went does not fix it for the whole search."""
        self.baseline_seconds = self.run(self.base, self.settings.time_limit).seconds
        self.baseline_measured_at = self.clock()
        return self.baseline_seconds

    def time_limit(self) -> float:
        if self.baseline_seconds is None:
            return self.settings.time_limit
        return min(self.settings.time_limit, self.settings.limit_vs_baseline * self.baseline_seconds)

    def config_for(self, trial: optuna.Trial) -> TrainConfig:
        params = {name: suggest(trial, name, dist) for name, dist in self.space.items()}
        return self.base.replace(**params)

    def plan(self, trial: optuna.Trial) -> Planned:
        config = self.config_for(trial)
        trial.set_user_attr("config", config.to_dict())  # what export reproduces, whole
        return Planned(config, best_feasible_value(trial.study))

    def train_seeds(self, planned: Planned) -> Trained:
        """Train one seed after another (config.seed, +1, ...) until objective/seeds.py stops it."""
        if (self.baseline_seconds is not None
                and self.clock() - self.baseline_measured_at > YARDSTICK_EVERY):
            self.measure_baseline()
        known = [planned.best, self.own_best, self.baseline_seconds]
        to_beat = min((seconds for seconds in known if seconds is not None), default=math.inf)
        rules, limit, config = self.settings.seed_rules(), self.time_limit(), planned.config
        runs: list[RunResult] = []
        while True:
            runs.append(self.run(config.replace(seed=config.seed + len(runs)), limit))
            stopped = stop_reason(runs, rules, to_beat if math.isfinite(to_beat) else None)
            if stopped is not None:
                break
        trained = Trained(runs, stopped, limit)
        if trained.accuracy >= rules.bar and not (trained.diverged or trained.over_time):
            self.own_best = min(self.own_best, trained.seconds)
        return trained

    def constraints(self, trained: Trained) -> dict[str, float]:
        """Each <= 0 when the trial dominates the seed recipe (module docstring). Both in units
        where 0.1 is a comparable miss (0.1 points short, 10 % slower): TPE sums them."""
        slower = 0.0 if self.baseline_seconds is None else trained.seconds / self.baseline_seconds - 1.0
        return {"accuracy_points_short": 100.0 * (self.settings.required_accuracy - trained.accuracy),
                "slower_than_recipe": slower}

    def record(self, trial: optuna.Trial, trained: Trained) -> float:
        runs = trained.runs
        value = penalized_value(trained.accuracy, trained.seconds, self.settings, self.baseline_seconds)
        trial.set_user_attr("accuracy", trained.accuracy)
        trial.set_user_attr("seconds", trained.seconds)
        trial.set_user_attr("train_seconds", statistics.median(run.train_seconds for run in runs))
        trial.set_user_attr("accuracies", [run.accuracy for run in runs])
        trial.set_user_attr("seconds_per_seed", [run.seconds for run in runs])
        trial.set_user_attr("stopped", trained.stopped)  # "diverged on seed N" says it diverged
        trial.set_user_attr("fingerprint", runs[0].fingerprint)
        if self.baseline_seconds is not None:
            trial.set_user_attr("vs_baseline", trained.seconds / self.baseline_seconds)
        self.set_constraints(trial, self.constraints(trained))
        if trained.over_time:
            finished = runs[:-1]
            trial.report(penalized_value(mean_accuracy(finished), median_seconds(finished), self.settings,
                                         self.baseline_seconds)
                         if finished else trained.time_limit, step=len(finished))
            raise optuna.TrialPruned(f"time limit: passed {trained.time_limit:.3f} s")
        if not math.isfinite(value):
            raise RuntimeError(f"non-finite objective value {value}")
        return value
