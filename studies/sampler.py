"""A sampler whose cost per trial stays flat as the study grows: TPE over a bounded history.

Optuna's TPE reads every trial of the study on each ask and fits its two Parzen estimators to all of
them, so its cost grows with the study (docs/performance.md measures it): beside GPU runs of a
few tenths of a second, thousands of trials in, the sampler would take longer than the run.
`BoundedHistory` hands the sampler a view of the study with at most `history` finished trials:
- the `best` lowest-valued COMPLETE ones (TPE's "good" group is at most its 25 best, so all of it
  is always in view),
- the most recent others, up to `history` (TPE weights older ones down anyway),
- and every RUNNING trial, which the constant liar counts as a pending bad result.
The same view serves the whole of one trial's sampling; the study itself is untouched.
benchmarks/bench_regret.py measures what the bound costs the search.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def bounded(trials: Sequence[FrozenTrial], history: int, best: int) -> list[FrozenTrial]:
    """The trials the sampler sees (module docstring), in the study's order."""
    finished = [t for t in trials if t.state in FINISHED]
    if len(finished) <= history:
        return list(trials)
    complete = [t for t in finished if t.state == TrialState.COMPLETE and t.value is not None]
    keep = {t.number for t in heapq.nsmallest(best, complete, key=lambda t: (t.value, t.number))}
    for trial in reversed(finished):
        if len(keep) >= history:
            break
        keep.add(trial.number)
    return [t for t in trials if t.number in keep or t.state not in FINISHED]


class _View:
    """The study as the inner sampler sees it: every attribute the study's, but its trials bounded.
    TPE reads trials through `_get_trials` (its own cache of them within one ask), so the view
    answers that name as well as the public `get_trials`."""

    def __init__(self, study: optuna.Study, trials: list[FrozenTrial]) -> None:
        self._study = study
        self._trials = trials

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return [t for t in self._trials if states is None or t.state in states]

    def _get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        return self.get_trials(deepcopy=False, states=states)


class BoundedHistory(BaseSampler):
    """`inner` (TPE), seeing at most `history` finished trials of the study, `best` of them its best."""

    def __init__(self, inner: BaseSampler, history: int, best: int) -> None:
        if best > history:
            raise ValueError(f"history ({history}) must be at least best ({best})")
        self.inner = inner
        self.history = history
        self.best = best
        self._view: tuple[int, _View] | None = None  # (trial number, the view its sampling uses)

    def _view_for(self, study: optuna.Study, trial: FrozenTrial) -> _View:
        if self._view is None or self._view[0] != trial.number:
            trials = bounded(study.get_trials(deepcopy=False), self.history, self.best)
            self._view = (trial.number, _View(study, trials))
        return self._view[1]

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self._view_for(study, trial), trial)  # type: ignore[arg-type]

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.inner.sample_relative(self._view_for(study, trial), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.inner.sample_independent(
            self._view_for(study, trial),
            trial,
            param_name,  # type: ignore[arg-type]
            param_distribution,
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
