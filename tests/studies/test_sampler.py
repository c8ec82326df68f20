"""The bounded history (studies/sampler.py): what the sampler sees, and that TPE sees no more."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from studies.sampler import BoundedHistory, bounded
from studies.spec import parse_spec

X = {"x": FloatDistribution(0.0, 1.0)}


def trial(
    number: int, value: float | None, state: TrialState = TrialState.COMPLETE
) -> optuna.trial.FrozenTrial:
    made = create_trial(state=state, value=value, params={"x": 0.5}, distributions=X)
    made.number = number
    return made


def test_the_view_keeps_the_best_the_latest_and_every_running_trial() -> None:
    trials = [trial(n, value=float(1000 + n) if n % 10 else float(n)) for n in range(100)]
    trials.append(trial(100, None, TrialState.RUNNING))
    seen = bounded(trials, history=20, best=5)
    numbers = [t.number for t in seen]
    assert numbers == sorted(numbers)
    assert {0, 10, 20, 30, 40} <= set(numbers)  # the five lowest values, however old
    assert set(range(85, 100)) <= set(numbers)  # then the most recent, up to 20 finished
    assert 100 in numbers and len(numbers) == 21  # and the running one, for the constant liar
    assert bounded(trials[:15], history=20, best=5) == trials[:15]  # a small study, seen whole


def test_tpe_samples_from_no_more_than_the_history() -> None:
    seen: list[int] = []

    class Counting(optuna.samplers.TPESampler):
        def _sample(self, study, trial, search_space):  # type: ignore[no-untyped-def]
            seen.append(len(study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))
            return super()._sample(study, trial, search_space)

    study = optuna.create_study(
        sampler=BoundedHistory(Counting(seed=0, n_startup_trials=5), history=30, best=10)
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(
        lambda t: (t.suggest_float("x", 0, 1) - 0.3) ** 2 + t.suggest_float("y", 0, 1), n_trials=60
    )
    assert max(seen) == 30 and len(study.trials) == 60
    assert study.best_value < 0.05  # it still searches


def test_the_spec_names_the_bound() -> None:
    document = {
        "study": {"name": "s"},
        "params": {"lr": {"type": "float", "low": 0.001, "high": 0.1}},
        "sampler": {"name": "tpe", "history": 200},
    }
    spec = parse_spec(document)
    assert spec.history == 200 and isinstance(spec.make_sampler(0), BoundedHistory)
    with pytest.raises(Exception, match=r"\[sampler\] history must be >= 50"):
        parse_spec({**document, "sampler": {"name": "tpe", "history": 10}})
