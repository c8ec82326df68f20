from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from objective.config import TrainConfig
from objective.data import Mnist
from objective.optuna_objective import (
    Objective,
    ObjectiveSettings,
    device_best,
    is_feasible,
    penalized_value,
    suggest,
)
from objective.result import RunResult
from objective.timed_run import train_once
from studies.optuna_internals import set_constraints

FINGERPRINT: dict[str, str | int] = {"device": "fake cpu", "device_type": "cpu", "torch": "x", "threads": 2}
SPACE = {
    "lr": FloatDistribution(1e-3, 1e-1, log=True),
    "conv1_kernel": IntDistribution(3, 7),
    "batch_size": CategoricalDistribution([64, 128]),
}
BASE = TrainConfig(batch_size=64, eval_batch=100, conv1_width=8, conv2_width=16, fc_width=64, seed=10)


@pytest.fixture(autouse=True)
def quiet_optuna() -> Iterator[None]:
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(previous)


def result(accuracy: float, seconds: float, seed: int = 0, *, diverged: bool = False,
           over_time: bool = False, holdout: float | None = None) -> RunResult:
    """One run; its held-out half scores `holdout`, or the selection half's `accuracy`."""
    return RunResult(seed=seed, accuracy=accuracy, holdout_accuracy=accuracy if holdout is None else holdout,
                     seconds=seconds, train_seconds=seconds * 0.9,
                     steps=10, diverged=diverged, over_time=over_time, fingerprint=dict(FINGERPRINT))


class FakeTrain:
    """Stands in for train_once: answers from a script and records what it was asked."""

    def __init__(self, answer: Callable[[TrainConfig, int], RunResult]) -> None:
        self.answer = answer
        self.calls: list[tuple[TrainConfig, float]] = []

    def __call__(self, config: TrainConfig, time_limit: float) -> RunResult:
        self.calls.append((config, time_limit))
        return self.answer(config, len(self.calls) - 1)


def scripted(*runs: RunResult) -> FakeTrain:
    """One run per call, in order."""
    return FakeTrain(lambda config, call: runs[call])


def make_study() -> optuna.Study:
    return optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))


YARDSTICK = 50.0  # the recipe's seconds, as if timed, for tests about everything but the yardstick


def make_objective(train: FakeTrain, yardstick: float | None = YARDSTICK, **settings: object) -> Objective:
    """An objective whose yardstick is `yardstick` seconds, never re-timed; None: timed by `train`."""
    objective = Objective(SPACE, BASE, ObjectiveSettings(**settings), train)  # type: ignore[arg-type]
    if yardstick is not None:
        objective.baseline_seconds, objective.baseline_measured_at = yardstick, math.inf
        objective.fingerprint = dict(FINGERPRINT)
    return objective


# --- the value's shape --------------------------------------------------------------------------

SETTINGS = ObjectiveSettings(accuracy_target=0.99, time_limit=12.0, penalty_per_point=1.0,
                             max_penalty_points=1.0)
RECIPE = 4.0  # the seed recipe's seconds here: the ceiling of every feasible value
FEASIBLE_ACCURACIES = [0.99, 9900 / 10000, 0.9901, 0.995, 1.0]
INFEASIBLE_ACCURACIES = [0.98999, 0.9899, 0.9895, 0.9890]  # within the 1-point cap, falling
SECONDS = [0.0, 0.01, 1.0, 3.0, 3.999, 4.0]  # up to the recipe's time


def value(accuracy: float, seconds: float) -> float:
    """The value in seconds of this device's recipe, to read the figures below in seconds."""
    return RECIPE * penalized_value(accuracy, seconds / RECIPE, SETTINGS)


def test_feasible_value_is_the_seconds() -> None:
    for accuracy in FEASIBLE_ACCURACIES:
        for seconds in SECONDS:
            assert value(accuracy, seconds) == seconds


def test_exactly_at_target_is_feasible() -> None:
    assert value(0.99, 2.0) == 2.0
    assert value(9900 / 10000, 2.0) == 2.0
    settings = ObjectiveSettings(accuracy_target=0.995)
    assert penalized_value(9950 / 10000, 0.5, settings) == 0.5
    assert penalized_value(9949 / 10000, 0.5, settings) > 1.0


def test_every_infeasible_value_is_above_every_feasible_one() -> None:
    # the dashboard's best trial goes by value alone: it must be a feasible one
    worst_feasible = max(value(a, s) for a in FEASIBLE_ACCURACIES for s in SECONDS)
    slower = [value(a, s) for a in FEASIBLE_ACCURACIES for s in (4.001, 5.0, 11.9)]
    short = [value(a, s) for a in INFEASIBLE_ACCURACIES for s in [*SECONDS, 5.0]]
    assert worst_feasible <= RECIPE < min(slower + short)


def test_slower_than_the_recipe_at_full_accuracy_costs_its_seconds() -> None:
    assert value(0.995, 5.0) == 5.0


def test_larger_shortfall_gives_larger_value_up_to_the_cap() -> None:
    values = [value(a, 1.0) for a in INFEASIBLE_ACCURACIES]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert value(0.9895, 1.0) == pytest.approx(RECIPE + 0.05 * RECIPE)  # 0.05 points: 5 % of a recipe
    assert value(0.98, 1.0) == pytest.approx(RECIPE + RECIPE)  # the cap: 1 point
    assert value(0.0, 1.0) == value(0.98, 1.0)


def test_a_fast_near_miss_ranks_above_a_slow_failure() -> None:
    near_miss = value(0.9896, 2.3)  # 0.04 points short, fast
    assert near_miss < value(0.9896, 6.0)  # the same miss, slower
    assert near_miss < value(0.985, 2.3)  # a worse miss, as fast
    assert near_miss < value(0.995, 4.5)  # accurate, but slower than the recipe


def test_the_value_is_bounded_whatever_the_run_did() -> None:
    bound = (SETTINGS.limit_vs_baseline + SETTINGS.penalty_per_point * SETTINGS.max_penalty_points) * RECIPE
    for accuracy in [*INFEASIBLE_ACCURACIES, 0.5, 0.1, 0.0]:
        for seconds in [*SECONDS, 11.9, 1e6]:
            assert value(accuracy, seconds) <= bound


def test_one_ceiling_whatever_the_yardsticks_did() -> None:
    # a worker re-timed the recipe at 3.2 s, another at 3.6 s: a 3.3 s trial short of the bar on
    # the first must still sit above a 3.5 s feasible one on the second
    infeasible = penalized_value(0.9899, 3.3 / 3.2, SETTINGS)
    feasible = penalized_value(0.995, 3.5 / 3.6, SETTINGS)
    slower = penalized_value(0.995, 3.3 / 3.2, SETTINGS)
    assert feasible < 1.0 < min(infeasible, slower)


@pytest.mark.parametrize("kwargs", [
    {"accuracy_target": 0.0}, {"accuracy_target": 1.5}, {"time_limit": 0.0}, {"time_limit": -1.0},
    {"time_limit": math.inf}, {"penalty_per_point": 0.0}, {"max_penalty_points": 0.0},
    {"limit_vs_baseline": 0.0}, {"accuracy_sd": 0.0}, {"repeats": 0}, {"crown_seeds": 0}, {"claim_seeds": -1},
    {"slower_margin": -0.1}, {"slower_runs": 0}, {"slower_margin": 0.2, "slower_margin_one_run": 0.1},
])
def test_settings_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ObjectiveSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_accept_the_edges() -> None:
    settings = ObjectiveSettings(accuracy_target=1.0, slower_margin=0.0, repeats=1, crown_seeds=1)
    assert settings.seed_rules().bar == 1.0


# --- suggest and config_for --------------------------------------------------------------------

def test_suggest_matches_each_distribution() -> None:
    study = make_study()
    trial = study.ask()
    lr = suggest(trial, "lr", FloatDistribution(1e-3, 1e-1, log=True))
    epochs = suggest(trial, "epochs", FloatDistribution(0.5, 1.25, step=0.25))
    kernel = suggest(trial, "conv1_kernel", IntDistribution(3, 7))
    width = suggest(trial, "conv2_width", IntDistribution(8, 64, step=8))
    batch = suggest(trial, "batch_size", CategoricalDistribution([128, 256]))
    assert isinstance(lr, float) and 1e-3 <= lr <= 1e-1
    assert epochs in (0.5, 0.75, 1.0, 1.25)
    assert isinstance(kernel, int) and 3 <= kernel <= 7
    assert isinstance(width, int) and width % 8 == 0
    assert batch in (128, 256)
    assert trial.distributions["lr"] == FloatDistribution(1e-3, 1e-1, log=True)
    assert trial.distributions["conv2_width"] == IntDistribution(8, 64, step=8)


def test_suggest_rejects_unknown_distributions() -> None:
    class Odd(FloatDistribution):
        pass

    trial = make_study().ask()
    with pytest.raises(TypeError, match="unsupported distribution for x"):
        suggest(trial, "x", object())  # type: ignore[arg-type]
    assert isinstance(suggest(trial, "y", Odd(0.0, 1.0)), float)  # subclasses still work


def test_config_for_applies_the_suggestions_to_the_base() -> None:
    objective = make_objective(scripted())
    trial = make_study().ask()
    config = objective.config_for(trial)
    assert config.lr == trial.params["lr"]
    assert config.conv1_kernel == trial.params["conv1_kernel"]
    assert config.batch_size == trial.params["batch_size"]
    assert (config.conv1_width, config.fc_width, config.seed) == (8, 64, 10)  # the base's


# --- one trial: attributes, constraint, value -------------------------------------------------

def test_feasible_trial_records_its_attributes() -> None:
    train = scripted(result(0.993, 4.5, seed=10))
    study = make_study()
    study.optimize(make_objective(train), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(4.5 / YARDSTICK)
    assert trial.user_attrs["accuracy"] == 0.993
    assert trial.user_attrs["accuracies"] == [0.993]
    assert trial.user_attrs["seconds"] == 4.5
    assert trial.user_attrs["train_seconds"] == pytest.approx(4.05)
    assert trial.user_attrs["fingerprint"] == FINGERPRINT
    assert trial.user_attrs["stopped"] == "a contender after 1 seed"
    assert trial.user_attrs["crowned"] is True and trial.user_attrs["yardstick"] == YARDSTICK
    config, limit = train.calls[0]
    assert trial.user_attrs["config"] == config.to_dict()
    assert TrainConfig(**trial.user_attrs["config"]) == config
    assert config.seed == BASE.seed
    assert limit == ObjectiveSettings().time_limit
    assert trial.constraints["accuracy_points_short"] == pytest.approx(100 * (0.99 - 0.993))
    assert trial.constraints["slower_than_recipe"] == pytest.approx(4.5 / YARDSTICK - 1)


def test_infeasible_trial_is_penalized_and_its_constraint_is_positive() -> None:
    study = make_study()
    study.optimize(make_objective(scripted(result(0.97, 1.0)), time_limit=50.0),
                   n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(1.0 + 1.0)  # the ceiling, and 2 points short capped at 1
    assert trial.constraints["accuracy_points_short"] == pytest.approx(2.0)


def test_trial_constraints_are_visible_on_the_live_trial() -> None:
    study = make_study()
    trial = study.ask()
    value = make_objective(scripted(result(0.985, 2.0)))(trial)
    assert trial.constraints["accuracy_points_short"] == pytest.approx(0.5)
    study.tell(trial, value)
    # A plain objective writes Optuna 5's named constraints through its public API ...
    assert study.trials[0].constraints == {"accuracy_points_short": pytest.approx(0.5),
                                           "slower_than_recipe": pytest.approx(2.0 / YARDSTICK - 1)}


def test_the_workers_constraints_are_also_the_list_the_dashboard_reads() -> None:
    study = make_study()
    trial = study.ask()
    objective = Objective(SPACE, BASE, ObjectiveSettings(), scripted(result(0.985, 4.0), result(0.985, 2.0)),
                          set_constraints=set_constraints)
    study.tell(trial, objective(trial))  # the first run times the yardstick: 4 s
    # ... the worker's also the list optuna-dashboard 0.21 reads (which Optuna reads as "0", "1")
    assert study.trials[0].constraints == {"accuracy_points_short": pytest.approx(0.5),
                                           "slower_than_recipe": -0.5,
                                           "0": pytest.approx(0.5), "1": -0.5}
    assert study.trials[0].system_attrs["constraints"] == [pytest.approx(0.5), -0.5]


def test_infeasible_trials_are_never_the_best() -> None:
    train = scripted(result(0.98, 0.5), result(0.995, 40.0), result(0.5, 0.1), result(0.991, 30.0))
    study = make_study()
    objective = make_objective(train)
    study.optimize(objective, n_trials=2)
    assert study.best_trial.number == 1
    study.optimize(objective, n_trials=2)
    assert study.best_trial.number == 3
    assert study.best_value == pytest.approx(30.0 / YARDSTICK)
    assert device_best(study, FINGERPRINT) == pytest.approx(30.0 / YARDSTICK)
    assert all(study.best_trial.constraints[k] <= 0 for k in study.best_trial.constraints)


def test_a_study_with_only_infeasible_trials_has_no_best() -> None:
    study = make_study()
    assert device_best(study, FINGERPRINT) is None  # no trials at all
    study.optimize(make_objective(scripted(result(0.98, 0.5), result(0.9, 0.2))),
                   n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    with pytest.raises(ValueError):
        _ = study.best_trial
    assert device_best(study, FINGERPRINT) is None


def test_each_device_is_judged_against_its_own_best() -> None:
    # an H100 worker found 0.5 of its recipe; an L4 worker's trial at 0.8 of its own is still its
    # device's best, crowned, and the time to beat on the L4 is its own, not the H100's
    study = make_study()
    h100, l4 = {"device": "h100"}, {"device": "l4"}
    fast = make_objective(FakeTrain(lambda config, call: RunResult(config.seed, 0.995, 0.995, 1.0, 0.9, 10,
                                                                    False, False, h100)), yardstick=2.0)
    fast.fingerprint = h100
    study.optimize(fast, n_trials=1)
    slow = make_objective(FakeTrain(lambda config, call: RunResult(config.seed, 0.995, 0.995, 8.0, 7.2, 10,
                                                                    False, False, l4)), yardstick=10.0)
    slow.fingerprint = l4
    study.optimize(slow, n_trials=2)
    assert [t.user_attrs["crowned"] for t in study.trials] == [True, True, False]
    assert device_best(study, h100) == pytest.approx(0.5) and device_best(study, l4) == pytest.approx(0.8)
    assert study.trials[2].user_attrs["stopped"] == "decided after 1 seed"  # not faster than 8 s
    assert study.best_trial.number == 0


# --- seed by seed --------------------------------------------------------------------------------

def test_seeds_are_consecutive_and_judged_on_median_seconds_and_mean_accuracy() -> None:
    # the last seed is below the bar and the first slow: judged on the mean accuracy (99.3 %) and
    # the median seconds (3 s), the trial is feasible and crowned at 3 s; on its worst seed it
    # would be infeasible, on its mean seconds (4.33 s) valued higher
    by_seed = {10: result(0.996, 9.0, 10), 11: result(0.998, 1.0, 11), 12: result(0.985, 3.0, 12)}
    train = FakeTrain(lambda config, call: by_seed[config.seed])
    study = make_study()
    study.optimize(make_objective(train, repeats=3), n_trials=1)
    trial = study.trials[0]
    assert [config.seed for config, _ in train.calls] == [10, 11, 12]
    assert len({config.replace(seed=0) for config, _ in train.calls}) == 1  # the same config
    assert trial.user_attrs["seconds"] == 3.0
    assert trial.value == pytest.approx(3.0 / YARDSTICK)
    assert trial.user_attrs["accuracy"] == pytest.approx(0.993)
    assert trial.constraints["accuracy_points_short"] == pytest.approx(-0.3) and is_feasible(trial)
    assert trial.user_attrs["stopped"] == "a contender after 3 seeds" and trial.user_attrs["crowned"]
    assert trial.user_attrs["accuracies"] == [0.996, 0.998, 0.985]
    assert trial.user_attrs["seconds_per_seed"] == [9.0, 1.0, 3.0]
    assert trial.user_attrs["config"]["seed"] == 10


def test_a_clearly_infeasible_first_seed_saves_the_other_seeds() -> None:
    train = scripted(result(0.980, 2.0), result(0.999, 2.0), result(0.999, 2.0))
    study = make_study()
    study.optimize(make_objective(train, repeats=3), n_trials=1)
    trial = study.trials[0]
    assert len(train.calls) == 1
    assert trial.state == TrialState.COMPLETE  # decided, so the sampler learns from it
    assert trial.user_attrs["stopped"].startswith("clearly infeasible after 1 seed")
    assert trial.constraints["accuracy_points_short"] > 0


def test_a_trial_clearly_slower_than_the_best_stops_after_one_seed() -> None:
    train = scripted(result(0.995, 2.0), result(0.995, 9.0), result(0.995, 9.0))
    study = make_study()
    study.optimize(make_objective(train), n_trials=1)  # the best: 2.0 s
    study.optimize(make_objective(train, repeats=2), n_trials=1)
    assert len(train.calls) == 2
    slow = study.trials[1]
    assert slow.user_attrs["stopped"].startswith("clearly slower after 1 seed")
    assert slow.value == pytest.approx(9.0 / YARDSTICK) and slow.user_attrs["crowned"] is False


def test_the_crown_guard_runs_a_would_be_best_trial_on_more_seeds() -> None:
    train = FakeTrain(lambda config, call: result(0.995, 2.0, config.seed))
    study = make_study()
    study.optimize(make_objective(train, repeats=2, crown_seeds=5), n_trials=1)
    trial = study.trials[0]
    assert [config.seed for config, _ in train.calls] == [10, 11, 12, 13, 14]
    assert trial.user_attrs["stopped"] == "crowned: held the bar and its speed over 5 seeds"
    assert len(trial.user_attrs["accuracies"]) == 5
    assert study.best_trial.number == 0


def test_a_crowned_trial_claims_on_seeds_that_decided_nothing() -> None:
    # crowned on 3 seeds at 99.5 % on the selection half; its 2 claim seeds give 99.0 % on the
    # held-out half (99.2 % on the selection half) and 3 s: the claim says so, on the held-out half
    # and on all images, and neither its value nor its crown moves (a decision on them would be
    # selection again)
    runs = [result(0.995, 2.0, seed, holdout=0.980) for seed in (10, 11, 12)]
    runs += [result(0.992, 3.0, 13, holdout=0.990), result(0.992, 3.0, 14, holdout=0.990)]
    train = scripted(*runs, result(0.999, 1.0))
    study = make_study()
    study.optimize(make_objective(train, repeats=3, crown_seeds=3, claim_seeds=2), n_trials=1)
    trial = study.trials[0]
    assert [config.seed for config, _ in train.calls] == [10, 11, 12, 13, 14]
    assert trial.user_attrs["crowned"] and trial.value == pytest.approx(2.0 / YARDSTICK)
    assert trial.user_attrs["accuracies"] == [0.995] * 3
    assert trial.user_attrs["claim_accuracies"] == [0.990, 0.990]
    assert trial.user_attrs["claim_accuracy"] == 0.990 and trial.user_attrs["claim_seconds"] == 3.0
    assert trial.user_attrs["claim_test_accuracy"] == pytest.approx(0.991)


def test_a_crowned_trial_is_measured_against_a_yardstick_timed_beside_it() -> None:
    # the yardstick said 50 s; crowned on 3 seeds of 2 s, the recipe is timed again (40 s, the
    # clock has drifted faster) before anything else: the crown's ratio, the time to beat from
    # now on, is 2 / 40, not 2 / 50
    train = scripted(*(result(0.995, 2.0, seed) for seed in (10, 11, 12)), result(0.99, 40.0))
    objective = make_objective(train, repeats=3, crown_seeds=3, yardstick_at_crown=True)
    study = make_study()
    study.optimize(objective, n_trials=1)
    assert [config for config, _ in train.calls][3] == BASE
    assert study.trials[0].value == pytest.approx(2.0 / 40.0) and objective.baseline_seconds == 40.0
    assert study.trials[0].user_attrs["yardstick"] == 40.0
    assert device_best(study, FINGERPRINT) == pytest.approx(2.0 / 40.0)


def test_a_crown_that_the_yardstick_timed_beside_it_undoes_is_no_crown() -> None:
    # seen in a real search: the first yardstick (50 s) came from a slow start of the host; a trial
    # of 45 s held the guard against it, and the recipe timed at its crown took 40 s: the trial is
    # slower than the recipe, so it is not crowned, runs no claim seeds, and sets no time to beat
    train = scripted(*(result(0.995, 45.0, seed) for seed in (10, 11, 12)), result(0.99, 40.0))
    objective = make_objective(train, repeats=3, crown_seeds=3, claim_seeds=2, yardstick_at_crown=True)
    study = make_study()
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert len(train.calls) == 4  # three seeds and the yardstick: no claim seeds
    assert trial.user_attrs["crowned"] is False and "claim_accuracy" not in trial.user_attrs
    assert trial.user_attrs["stopped"] == ("lost the crown guard after 3 seeds: 45.000 s against "
                                           "40.000 s to beat by the yardstick timed at its crown")
    assert trial.value == pytest.approx(45.0 / 40.0) and not is_feasible(trial)
    assert device_best(study, FINGERPRINT) is None


def test_a_trial_that_is_not_crowned_claims_nothing() -> None:
    train = scripted(result(0.980, 2.0), result(0.999, 1.0))
    study = make_study()
    study.optimize(make_objective(train, repeats=3, crown_seeds=3, claim_seeds=2), n_trials=1)
    assert len(train.calls) == 1 and "claim_accuracy" not in study.trials[0].user_attrs


def test_a_lucky_start_loses_the_crown_and_never_becomes_the_best() -> None:
    # first trial: the best at 5 s; the second is feasible and faster on 2 seeds, then falls short
    runs = [result(0.995, 5.0)] * 6 + [result(0.9925, 2.0)] * 2 + [result(0.9880, 2.0)] * 4
    train = scripted(*runs)
    study = make_study()
    objective = make_objective(train, accuracy_margin=0.002, repeats=2, crown_seeds=6)
    study.optimize(objective, n_trials=1)
    assert study.trials[0].user_attrs["stopped"].startswith("crowned")
    study.optimize(objective, n_trials=1)
    second = study.trials[1]
    assert second.user_attrs["stopped"].startswith("clearly infeasible")
    assert second.constraints["accuracy_points_short"] > 0
    assert study.best_trial.number == 0


def test_prepared_trials_also_see_the_best_of_this_workers_last_trial() -> None:
    """With --prefetch, trial 1 is prepared (its best read from the storage) before trial 0 is
    told; it is still judged against trial 0's time."""
    train = scripted(result(0.995, 2.0, 10), result(0.995, 2.0, 11), result(0.995, 20.0, 10))
    study = make_study()
    objective = make_objective(train, repeats=2)
    first, second = study.ask(), study.ask()
    planned = objective.plan(first), objective.plan(second)  # both before any result
    assert [plan.best for plan in planned] == [None, None]
    assert objective.train_seeds(planned[0]).crowned  # 2 s
    # 20 s: far faster than the recipe's 50 s, the time to beat as the storage had it at planning
    judged = objective.train_seeds(planned[1])
    assert judged.stopped == "clearly slower after 1 seed: 20.000 s against 2.000 s to beat"
    assert not judged.crowned and len(train.calls) == 3


def test_diverged_seed_flags_the_trial() -> None:
    train = scripted(result(0.995, 2.0, 10), result(0.098, 0.3, 11, diverged=True), result(0.995, 2.0, 12))
    study = make_study()
    study.optimize(make_objective(train, repeats=3), n_trials=1)
    trial = study.trials[0]
    assert len(train.calls) == 2  # the seed after the diverged one never ran
    assert trial.state == TrialState.COMPLETE  # decided: the sampler learns from it
    assert trial.user_attrs["stopped"] == "diverged on seed 11"
    assert trial.user_attrs["accuracies"] == [0.995, 0.098] and trial.user_attrs["crowned"] is False
    assert trial.constraints["accuracy_points_short"] == pytest.approx(100 * (0.99 - (0.995 + 0.098) / 2))
    assert trial.value == pytest.approx(1.0 + 1.0)  # the ceiling and the whole penalty: the worst value


# --- the time limit -----------------------------------------------------------------------------

def test_over_time_run_is_pruned_with_its_finished_seeds_as_intermediate() -> None:
    train = scripted(result(0.995, 1.0), result(0.995, 13.0, over_time=True), result(0.995, 1.0))
    study = make_study()
    study.optimize(make_objective(train, repeats=3, time_limit=12.0), n_trials=1)
    trial = study.trials[0]
    assert len(train.calls) == 2  # the third seed was never trained
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["stopped"].startswith("over the time limit on seed")
    assert trial.intermediate_values == {1: pytest.approx(1.0 / YARDSTICK)}  # its one finished seed
    with pytest.raises(ValueError):
        _ = study.best_trial  # a pruned trial never wins


def test_over_time_raises_trial_pruned_when_called_directly() -> None:
    trial = make_study().ask()
    objective = make_objective(scripted(result(0.995, 130.0, over_time=True)))
    with pytest.raises(optuna.TrialPruned, match=r"time limit: passed 120\.000 s"):
        objective(trial)


def test_diverged_and_over_time_is_completed_not_pruned() -> None:
    study = make_study()
    study.optimize(make_objective(scripted(result(0.1, 200.0, diverged=True, over_time=True))), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["stopped"].startswith("diverged")


def test_the_seed_recipe_sets_the_time_limit() -> None:
    train = FakeTrain(lambda config, call: result(0.995, 4.0, config.seed))
    objective = make_objective(train, yardstick=None, time_limit=100.0, limit_vs_baseline=3.0)
    assert objective.run_limit() == 100.0  # nothing measured yet
    assert objective.measure_baseline() == 4.0
    assert train.calls[0][0] == BASE  # the base config itself: the seed recipe
    assert objective.run_limit() == 12.0
    study = make_study()
    study.optimize(objective, n_trials=1)
    assert train.calls[1][1] == 12.0
    assert study.trials[0].user_attrs["vs_baseline"] == pytest.approx(1.0)


def test_the_seed_recipe_is_the_time_to_beat_before_any_feasible_trial() -> None:
    # the recipe takes 4 s here: a feasible 5 s trial is clearly slower, not crowned
    train = scripted(result(0.99, 4.0), result(0.995, 5.0), result(0.995, 3.0), result(0.995, 3.0))
    objective = make_objective(train, yardstick=None, repeats=2, crown_seeds=3)
    objective.measure_baseline()
    study = make_study()
    study.optimize(objective, n_trials=1)
    stopped = study.trials[0].user_attrs["stopped"]
    assert stopped == "clearly slower after 1 seed: 5.000 s against 4.000 s to beat"
    assert study.trials[0].user_attrs["vs_baseline"] == pytest.approx(1.25)


def test_feasible_means_dominating_the_seed_recipe() -> None:
    # recipe 4 s; the trials: accurate and faster, accurate and slower, fast and short of the bar
    train = scripted(result(0.99, 4.0), result(0.995, 3.0), result(0.995, 4.2), result(0.985, 2.0))
    objective = make_objective(train, yardstick=None)
    objective.measure_baseline()
    study = make_study()
    study.optimize(objective, n_trials=3)
    faster, slower, short = (trial.constraints for trial in study.trials)
    assert faster["accuracy_points_short"] <= 0 and faster["slower_than_recipe"] == pytest.approx(-0.25)
    assert slower["accuracy_points_short"] <= 0 and slower["slower_than_recipe"] == pytest.approx(0.05)
    assert short["accuracy_points_short"] == pytest.approx(0.5) and short["slower_than_recipe"] < 0
    assert study.best_trial.number == 0
    assert study.best_trial.user_attrs["vs_baseline"] == pytest.approx(0.75)


def test_the_yardstick_is_the_median_of_its_seeds() -> None:
    # one of three runs spiked: the median does not carry it into the time to beat
    train = scripted(result(0.99, 4.0), result(0.99, 7.9), result(0.99, 4.2))
    objective = make_objective(train, yardstick=None, yardstick_seeds=3)
    assert objective.measure_baseline() == 4.2
    assert [config.seed for config, _ in train.calls] == [BASE.seed, BASE.seed + 1, BASE.seed + 2]
    assert all(config.replace(seed=BASE.seed) == BASE for config, _ in train.calls)


def test_the_yardstick_is_timed_again_once_it_is_stale() -> None:
    train = FakeTrain(lambda config, call: result(0.995, 4.0 if call == 0 else 2.0, config.seed))
    objective = make_objective(train, yardstick=None)
    objective.measure_baseline()
    study = make_study()
    study.optimize(objective, n_trials=1)
    assert len(train.calls) == 2 and objective.baseline_seconds == 4.0  # fresh: not timed again
    objective.baseline_measured_at -= objective.settings.yardstick_every + 1
    study.optimize(objective, n_trials=1)
    assert [config for config, _ in train.calls].count(BASE) == 2  # the recipe again, then the trial
    assert objective.baseline_seconds == 2.0
    attrs = study.trials[1].user_attrs
    assert attrs["vs_baseline"] == pytest.approx(attrs["seconds"] / 2.0)


def test_the_spec_limit_caps_the_baseline_limit() -> None:
    objective = make_objective(scripted(result(0.995, 50.0)), yardstick=None, time_limit=60.0)
    objective.measure_baseline()
    assert objective.run_limit() == 60.0


# --- the real training run through Optuna ------------------------------------------------------

def test_real_training_through_study_optimize(synthetic_mnist: Mnist) -> None:
    space = {"lr": FloatDistribution(0.005, 0.02, log=True), "conv1_kernel": IntDistribution(3, 5)}
    # limit_vs_baseline far out: runs of a few milliseconds on a loaded host must not be cut short
    settings = ObjectiveSettings(accuracy_target=0.99, time_limit=120.0, limit_vs_baseline=1000.0)
    objective = Objective(space, BASE, settings,
                          lambda config, limit: train_once(config, synthetic_mnist, limit))
    study = make_study()
    study.optimize(objective, n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        attrs = trial.user_attrs
        config = TrainConfig(**attrs["config"])
        assert (config.lr, config.conv1_kernel) == (trial.params["lr"], trial.params["conv1_kernel"])
        again = train_once(config, synthetic_mnist)  # the recorded config, trained again: the same run
        assert attrs["accuracies"] == [again.accuracy] and attrs["fingerprint"] == again.fingerprint
        assert attrs["yardstick"] == objective.baseline_seconds
        assert attrs["vs_baseline"] == pytest.approx(attrs["seconds"] / attrs["yardstick"])
        # 8 steps on 512 images stay below 98 %: infeasible by more than the 1-point cap, so the
        # value is the ceiling (the recipe's ratio, or the trial's own if slower) plus the whole penalty
        assert attrs["accuracy"] < 0.98
        assert trial.constraints["accuracy_points_short"] == pytest.approx(100 * (0.99 - attrs["accuracy"]))
        assert trial.value == pytest.approx(max(attrs["vs_baseline"], 1.0) + 1.0)


def test_accuracy_margin_raises_the_bar_for_feasibility() -> None:
    settings = ObjectiveSettings(accuracy_target=0.99, accuracy_margin=0.001, time_limit=60.0)
    assert settings.required_accuracy == 0.991
    assert penalized_value(0.991, 0.8, settings) == 0.8
    assert penalized_value(0.9905, 0.8, settings) == pytest.approx(1.0 + 0.05)
    with pytest.raises(ValueError, match="accuracy_margin"):
        ObjectiveSettings(accuracy_target=0.99, accuracy_margin=0.02)
