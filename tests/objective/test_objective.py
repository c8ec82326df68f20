from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from objective.config import TrainConfig
from objective.data import Mnist
from objective.objective import (
    Objective,
    ObjectiveSettings,
    best_feasible_value,
    penalized_value,
    suggest,
)
from objective.trainer import RunResult

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
           over_time: bool = False) -> RunResult:
    return RunResult(seed=seed, accuracy=accuracy, seconds=seconds, train_seconds=seconds * 0.9,
                     steps=10, diverged=diverged, over_time=over_time, fingerprint=dict(FINGERPRINT))


class FakeTrain:
    """Stands in for train_once: answers from a script and records what it was asked."""

    def __init__(self, answer: Callable[[TrainConfig, int], RunResult]) -> None:
        self.answer = answer
        self.calls: list[tuple[TrainConfig, float]] = []

    def __call__(self, config: TrainConfig, data: Mnist, time_limit: float) -> RunResult:
        self.calls.append((config, time_limit))
        return self.answer(config, len(self.calls) - 1)


def scripted(*runs: RunResult) -> FakeTrain:
    """One run per call, in order."""
    return FakeTrain(lambda config, call: runs[call])


def make_study() -> optuna.Study:
    return optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=0))


def make_objective(train: FakeTrain, data: Mnist, **settings: object) -> Objective:
    return Objective(SPACE, BASE, ObjectiveSettings(**settings), data, train=train)  # type: ignore[arg-type]


# --- the penalty -------------------------------------------------------------------------------

SETTINGS = ObjectiveSettings(accuracy_target=0.99, time_limit=60.0, penalty_per_point=10.0)
FEASIBLE_ACCURACIES = [0.99, 9900 / 10000, 0.9901, 0.995, 1.0]
INFEASIBLE_ACCURACIES = [0.98999, 0.9899, 0.98, 0.9, 0.5, 0.1, 0.0]
SECONDS = [0.0, 0.01, 1.0, 30.0, 59.999, 60.0]


def test_feasible_value_is_the_seconds() -> None:
    for accuracy in FEASIBLE_ACCURACIES:
        for seconds in SECONDS:
            assert penalized_value(accuracy, seconds, SETTINGS) == seconds


def test_exactly_at_target_is_feasible() -> None:
    assert penalized_value(0.99, 5.0, SETTINGS) == 5.0
    assert penalized_value(9900 / 10000, 5.0, SETTINGS) == 5.0
    settings = ObjectiveSettings(accuracy_target=0.995)
    assert penalized_value(9950 / 10000, 5.0, settings) == 5.0
    assert penalized_value(9949 / 10000, 5.0, settings) > settings.time_limit


def test_every_infeasible_value_is_worse_than_every_feasible_one() -> None:
    worst_feasible = max(penalized_value(a, s, SETTINGS) for a in FEASIBLE_ACCURACIES for s in SECONDS)
    best_infeasible = min(penalized_value(a, s, SETTINGS) for a in INFEASIBLE_ACCURACIES for s in SECONDS)
    assert worst_feasible <= SETTINGS.time_limit < best_infeasible


def test_larger_shortfall_gives_larger_value() -> None:
    values = [penalized_value(a, 1.0, SETTINGS) for a in INFEASIBLE_ACCURACIES]  # falling accuracy
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    # one point below the target costs penalty_per_point seconds on top of the limit
    assert penalized_value(0.98, 1.0, SETTINGS) == pytest.approx(60.0 + 10.0)
    assert penalized_value(0.0, 1.0, SETTINGS) == pytest.approx(60.0 + 10.0 * 99.0)


def test_infeasible_value_does_not_reward_speed() -> None:
    assert penalized_value(0.98, 0.001, SETTINGS) == penalized_value(0.98, 59.0, SETTINGS)


@pytest.mark.parametrize("kwargs", [
    {"accuracy_target": 0.0}, {"accuracy_target": 1.5}, {"time_limit": 0.0}, {"time_limit": -1.0},
    {"penalty_per_point": 0.0}, {"repeats": 0}, {"budget_margin": -0.1},
])
def test_settings_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ObjectiveSettings(**kwargs)  # type: ignore[arg-type]


def test_settings_accept_the_edges() -> None:
    assert ObjectiveSettings(accuracy_target=1.0, budget_margin=0.0, repeats=1).budget_margin == 0.0


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


def test_config_for_applies_the_suggestions_to_the_base(synthetic_mnist: Mnist) -> None:
    objective = make_objective(scripted(), synthetic_mnist)
    trial = make_study().ask()
    config = objective.config_for(trial)
    assert config.lr == trial.params["lr"]
    assert config.conv1_kernel == trial.params["conv1_kernel"]
    assert config.batch_size == trial.params["batch_size"]
    assert (config.conv1_width, config.fc_width, config.seed) == (8, 64, 10)  # the base's


# --- one trial: attributes, constraint, value -------------------------------------------------

def test_feasible_trial_records_its_attributes(synthetic_mnist: Mnist) -> None:
    train = scripted(result(0.993, 4.5, seed=10))
    study = make_study()
    study.optimize(make_objective(train, synthetic_mnist), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.value == 4.5
    assert trial.user_attrs["accuracy"] == 0.993
    assert trial.user_attrs["accuracies"] == [0.993]
    assert trial.user_attrs["seconds"] == 4.5
    assert trial.user_attrs["train_seconds"] == pytest.approx(4.05)
    assert trial.user_attrs["diverged"] is False
    assert trial.user_attrs["fingerprint"] == FINGERPRINT
    assert "reason" not in trial.user_attrs
    config, limit = train.calls[0]
    assert trial.user_attrs["config"] == config.to_dict()
    assert TrainConfig(**trial.user_attrs["config"]) == config
    assert config.seed == BASE.seed
    assert limit == ObjectiveSettings().time_limit
    assert trial.constraints == {"accuracy_shortfall": pytest.approx(0.99 - 0.993)}
    assert trial.constraints["accuracy_shortfall"] <= 0


def test_infeasible_trial_is_penalized_and_its_constraint_is_positive(synthetic_mnist: Mnist) -> None:
    study = make_study()
    study.optimize(make_objective(scripted(result(0.97, 1.0)), synthetic_mnist, time_limit=50.0),
                   n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(50.0 + 10.0 * 2.0)
    assert trial.constraints["accuracy_shortfall"] == pytest.approx(0.02)
    assert trial.constraints["accuracy_shortfall"] > 0


def test_trial_constraints_are_visible_on_the_live_trial(synthetic_mnist: Mnist) -> None:
    study = make_study()
    trial = study.ask()
    value = make_objective(scripted(result(0.985, 2.0)), synthetic_mnist)(trial)
    assert trial.constraints == {"accuracy_shortfall": pytest.approx(0.005)}
    study.tell(trial, value)
    assert study.trials[0].constraints == {"accuracy_shortfall": pytest.approx(0.005)}


def test_infeasible_trials_are_never_the_best(synthetic_mnist: Mnist) -> None:
    train = scripted(result(0.98, 0.5), result(0.995, 40.0), result(0.5, 0.1), result(0.991, 30.0))
    study = make_study()
    objective = make_objective(train, synthetic_mnist)
    study.optimize(objective, n_trials=2)
    assert study.best_trial.number == 1
    study.optimize(objective, n_trials=2)
    assert study.best_trial.number == 3
    assert study.best_value == 30.0
    assert best_feasible_value(study) == 30.0
    assert all(study.best_trial.constraints[k] <= 0 for k in study.best_trial.constraints)


def test_a_study_with_only_infeasible_trials_has_no_best(synthetic_mnist: Mnist) -> None:
    study = make_study()
    assert best_feasible_value(study) is None  # no trials at all
    study.optimize(make_objective(scripted(result(0.98, 0.5), result(0.9, 0.2)), synthetic_mnist),
                   n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    with pytest.raises(ValueError):
        _ = study.best_trial
    assert best_feasible_value(study) is None


# --- repeats -----------------------------------------------------------------------------------

def test_repeats_use_consecutive_seeds_median_seconds_and_mean_accuracy(synthetic_mnist: Mnist) -> None:
    by_seed = {10: result(0.990, 5.0, 10), 11: result(0.994, 1.0, 11), 12: result(0.998, 3.0, 12)}
    train = FakeTrain(lambda config, call: by_seed[config.seed])
    study = make_study()
    study.optimize(make_objective(train, synthetic_mnist, repeats=3), n_trials=1)
    trial = study.trials[0]
    assert [config.seed for config, _ in train.calls] == [10, 11, 12]
    assert len({limit for _, limit in train.calls}) == 1
    # apart from the seed, every repeat trains the same config
    assert len({config.replace(seed=0) for config, _ in train.calls}) == 1
    assert trial.user_attrs["seconds"] == 3.0
    assert trial.value == 3.0
    assert trial.user_attrs["accuracy"] == pytest.approx(statistics.fmean([0.990, 0.994, 0.998]))
    assert trial.user_attrs["accuracies"] == [0.990, 0.994, 0.998]
    assert trial.user_attrs["config"]["seed"] == 10


def test_feasibility_is_judged_on_the_mean_accuracy(synthetic_mnist: Mnist) -> None:
    # one seed below the target, the mean above it: feasible
    runs = [result(0.985, 2.0), result(0.996, 2.0), result(0.995, 2.0)]
    study = make_study()
    study.optimize(make_objective(scripted(*runs), synthetic_mnist, repeats=3), n_trials=1)
    assert study.trials[0].value == 2.0
    assert study.trials[0].constraints["accuracy_shortfall"] <= 0


def test_repeats_exactly_at_target_are_feasible(synthetic_mnist: Mnist) -> None:
    # float means of runs on the target can land an ulp below it (fmean([0.99] * 3) < 0.99)
    runs = [result(9900 / 10000, 4.0)] * 3 + [result(0.9905, 4.0), result(0.9895, 4.0), result(0.99, 4.0)]
    study = make_study()
    study.optimize(make_objective(scripted(*runs), synthetic_mnist, repeats=3), n_trials=2)
    for trial in study.trials:
        assert trial.value == 4.0
        assert trial.constraints["accuracy_shortfall"] <= 0
    assert best_feasible_value(study) == 4.0


def test_diverged_repeat_flags_the_trial(synthetic_mnist: Mnist) -> None:
    runs = [result(0.995, 2.0), result(0.098, 0.3, diverged=True)]
    study = make_study()
    study.optimize(make_objective(scripted(*runs), synthetic_mnist, repeats=2), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["diverged"] is True
    assert trial.user_attrs["reason"].startswith("diverged")
    assert trial.value > ObjectiveSettings().time_limit
    assert trial.constraints["accuracy_shortfall"] > 0


# --- time limit and time-budget pruning --------------------------------------------------------

def test_over_time_run_is_pruned_with_a_reason(synthetic_mnist: Mnist) -> None:
    study = make_study()
    objective = make_objective(scripted(result(0.995, 12.5, over_time=True)), synthetic_mnist,
                               time_limit=12.0)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["reason"] == "time budget: passed 12.000 s"
    assert trial.user_attrs["accuracy"] == 0.995  # still recorded
    with pytest.raises(ValueError):
        _ = study.best_trial  # a pruned trial never wins


def test_over_time_raises_trial_pruned_when_called_directly(synthetic_mnist: Mnist) -> None:
    trial = make_study().ask()
    objective = make_objective(scripted(result(0.995, 1.0), result(0.995, 130.0, over_time=True)),
                               synthetic_mnist, repeats=2)
    with pytest.raises(optuna.TrialPruned, match="time budget"):
        objective(trial)


def test_a_run_over_time_stops_the_trial_without_the_remaining_seeds(synthetic_mnist: Mnist) -> None:
    train = scripted(result(0.995, 1.0), result(0.995, 13.0, over_time=True), result(0.995, 1.0))
    study = make_study()
    study.optimize(make_objective(train, synthetic_mnist, repeats=3, time_limit=12.0), n_trials=1)
    assert len(train.calls) == 2  # the third seed was never trained: the trial cost <= 1 s + 12 s
    assert study.trials[0].state == TrialState.PRUNED
    assert study.trials[0].user_attrs["accuracies"] == [0.995, 0.995]


def test_prepared_trials_also_get_the_budget_of_this_workers_last_trial(synthetic_mnist: Mnist) -> None:
    """With --prefetch, trial 1 is prepared (its limit read from the storage) before trial 0 is
    told; the limit it trains under still comes from trial 0's feasible time."""
    train = scripted(result(0.995, 10.0), result(0.995, 20.0))
    study = make_study()
    objective = make_objective(train, synthetic_mnist, time_limit=100.0, budget_margin=0.5)
    first, second = study.ask(), study.ask()
    planned = objective.prepare(first), objective.prepare(second)  # both before any result
    assert [plan.time_limit for plan in planned] == [100.0, 100.0]
    objective.run(planned[0])
    assert objective.run(planned[1]).time_limit == pytest.approx(15.0)
    assert [limit for _, limit in train.calls] == pytest.approx([100.0, 15.0])


def test_diverged_and_over_time_is_completed_not_pruned(synthetic_mnist: Mnist) -> None:
    study = make_study()
    study.optimize(make_objective(scripted(result(0.1, 200.0, diverged=True, over_time=True)),
                                  synthetic_mnist), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs["reason"].startswith("diverged")
    assert trial.value > ObjectiveSettings().time_limit


def test_without_budget_margin_the_limit_stays_fixed(synthetic_mnist: Mnist) -> None:
    train = scripted(result(0.995, 10.0), result(0.995, 5.0), result(0.995, 7.0))
    study = make_study()
    study.optimize(make_objective(train, synthetic_mnist, time_limit=100.0), n_trials=3)
    assert [limit for _, limit in train.calls] == [100.0, 100.0, 100.0]


def test_budget_margin_shrinks_the_limit_once_a_feasible_trial_exists(synthetic_mnist: Mnist) -> None:
    train = scripted(
        result(0.5, 3.0),     # infeasible: no budget from it
        result(0.995, 10.0),  # feasible: best 10 -> limit 15
        result(0.98, 2.0),    # infeasible, faster: still 15
        result(0.995, 8.0),   # feasible, better: best 8 -> limit 12
        result(0.995, 9.0),   # feasible, worse: stays 12
        result(0.995, 1.0),
    )
    study = make_study()
    objective = make_objective(train, synthetic_mnist, time_limit=100.0, budget_margin=0.5)
    study.optimize(objective, n_trials=6)
    limits = [limit for _, limit in train.calls]
    assert limits == pytest.approx([100.0, 100.0, 15.0, 15.0, 12.0, 12.0])
    assert objective.time_limit(study) == pytest.approx(1.5)


def test_budget_margin_never_raises_the_limit(synthetic_mnist: Mnist) -> None:
    train = scripted(result(0.995, 10.0), result(0.995, 10.0))
    study = make_study()
    study.optimize(make_objective(train, synthetic_mnist, time_limit=12.0, budget_margin=1.0), n_trials=2)
    assert [limit for _, limit in train.calls] == [12.0, 12.0]


def test_pruned_trials_do_not_set_the_budget(synthetic_mnist: Mnist) -> None:
    train = scripted(result(0.995, 2.0, over_time=True), result(0.995, 50.0))
    study = make_study()
    study.optimize(make_objective(train, synthetic_mnist, time_limit=100.0, budget_margin=0.1),
                   n_trials=2)
    assert [limit for _, limit in train.calls] == [100.0, 100.0]


# --- the real training run through Optuna ------------------------------------------------------

def test_real_training_through_study_optimize(synthetic_mnist: Mnist) -> None:
    space = {"lr": FloatDistribution(0.005, 0.02, log=True), "conv1_kernel": IntDistribution(3, 5)}
    settings = ObjectiveSettings(accuracy_target=0.99, time_limit=120.0)
    study = make_study()
    study.optimize(Objective(space, BASE, settings, synthetic_mnist), n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        attrs = trial.user_attrs
        assert 0.0 <= attrs["accuracy"] <= 1.0
        assert attrs["diverged"] is False
        assert attrs["fingerprint"]["device_type"] == "cpu"
        assert attrs["config"]["conv1_kernel"] == trial.params["conv1_kernel"]
        assert attrs["config"]["lr"] == trial.params["lr"]
        assert trial.value == penalized_value(attrs["accuracy"], attrs["seconds"], settings)
        assert math.isfinite(trial.value)
        assert trial.constraints["accuracy_shortfall"] == pytest.approx(0.99 - attrs["accuracy"])


def test_accuracy_margin_raises_the_bar_for_feasibility() -> None:
    settings = ObjectiveSettings(accuracy_target=0.99, accuracy_margin=0.001, time_limit=60.0)
    assert settings.required_accuracy == 0.991
    assert penalized_value(0.991, 2.0, settings) == 2.0
    assert penalized_value(0.9905, 2.0, settings) > 60.0
    with pytest.raises(ValueError, match="accuracy_margin"):
        ObjectiveSettings(accuracy_target=0.99, accuracy_margin=0.02)
