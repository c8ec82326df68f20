"""Seeds as fidelity: a trial runs its seeds one at a time and stops once its fate is decided.

After each seed, with k seeds run, mean accuracy `acc` and median seconds `secs`:
1. a diverged or over-time run ends the trial;
2. clearly infeasible: even `acc + clearly_sds * accuracy_sd / sqrt(k)` is below the bar (the accuracy the
   study asks for): more seeds would not lift it there;
3. clearly slower: `secs` is past the time to beat by more than `slower_margin` (the clock's
   noise, docs/search.md), and so is each of the last `slower_runs` runs, or the last run alone
   by more than `slower_margin_one_run`: more seeds would not make it the answer. One run within
   the clock's noise and its spikes of the line decides nothing; one far past it does;
4. below `repeats` seeds, go on; at `repeats`, a trial that is feasible (`acc` >= bar) and faster
   than the time to beat is a contender for the crown, every other trial is decided;
5. the crown guard, a sequential test: a contender runs on to `crown_seeds` seeds, stopped
   early only by rules 1-3, and is judged at the end on all its seeds (feasible, and faster than
   the time to beat), so the study's best trial has held the bar and its speed on seeds that did
   not select it.

The time to beat is the best crowned trial's ratio on this device times the worker's yardstick
(objective/optuna_objective.py), or the seed recipe's own time on this device where that is lower: the
search exists to beat the recipe, so no seed is spent confirming a config slower than it.

A trial that passes the guard is crowned (`is_crowned`); only crowned trials set the time to beat
and are exported. Picking the best of many noisy trials picks luck (the winner's curse), and the
guard itself keeps the trials whose mean over its seeds happened to clear a bar their true means
sit near, so the crown's own seeds still flatter it. A crowned trial therefore runs `claim_seeds`
more seeds that decide nothing (objective/optuna_objective.py): its claim, the accuracy and seconds export
reports, comes from them alone, and fresh seeds agree with it on average.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from objective.result import RunResult


@dataclass(frozen=True)
class SeedRules:
    """The rules above, as `ObjectiveSettings.seed_rules` reads them from the spec (its fields say
    what each is); no defaults here, so the spec stays their one source."""
    bar: float
    repeats: int
    crown_seeds: int
    accuracy_sd: float
    clearly_sds: float
    slower_margin: float
    slower_runs: int
    slower_margin_one_run: float


def mean_accuracy(runs: Sequence[RunResult]) -> float:
    # Rounded: the float mean of runs all exactly on the bar can land one ulp below it
    # (fmean([0.99] * 3) == 0.9899999999999999). Accuracies are multiples of 1e-4.
    return round(statistics.fmean(run.accuracy for run in runs), 12)


def median_seconds(runs: Sequence[RunResult]) -> float:
    return statistics.median(run.seconds for run in runs)


def stop_reason(runs: Sequence[RunResult], rules: SeedRules, to_beat: float | None) -> str | None:
    """Why the trial with these `runs` stops now, or None to run another seed. `to_beat`: the
    seconds a contender must beat (module docstring), None when nothing is known yet."""
    k, last = len(runs), runs[-1]
    if last.diverged:
        return f"diverged on seed {last.seed}"
    if last.over_time:
        return f"over the time limit on seed {last.seed}"
    accuracy, seconds = mean_accuracy(runs), median_seconds(runs)
    if accuracy + rules.clearly_sds * rules.accuracy_sd / math.sqrt(k) < rules.bar:
        return (f"clearly infeasible after {_seeds(k)}: mean {100 * accuracy:.3f} % "
                f"against {100 * rules.bar:.2f} %")
    if is_clearly_slower(runs, rules, to_beat):
        return f"clearly slower after {_seeds(k)}: {seconds:.3f} s against {to_beat:.3f} s to beat"
    if k < rules.repeats:
        return None
    contender = is_contender(runs, rules, to_beat)
    if k == rules.repeats and not contender:
        return f"decided after {_seeds(k)}"
    if k < rules.crown_seeds:
        return None  # the crown guard: only rules 1-3 stop it before crown_seeds
    if k == rules.repeats:
        return f"a contender after {_seeds(k)}"
    if contender:
        return f"crowned: held the bar and its speed over {_seeds(k)}"
    return f"lost the crown guard after {_seeds(k)}"


def is_clearly_slower(runs: Sequence[RunResult], rules: SeedRules, to_beat: float | None) -> bool:
    """Rule 3 of the module docstring."""
    line = math.inf if to_beat is None else to_beat * (1.0 + rules.slower_margin)
    if median_seconds(runs) <= line:
        return False
    assert to_beat is not None
    if runs[-1].seconds > to_beat * (1.0 + rules.slower_margin_one_run):
        return True
    return len(runs) >= rules.slower_runs and min(run.seconds for run in runs[-rules.slower_runs:]) > line


def is_contender(runs: Sequence[RunResult], rules: SeedRules, to_beat: float | None) -> bool:
    """Feasible and faster than the time to beat: the trial would become the study's best."""
    return mean_accuracy(runs) >= rules.bar and (to_beat is None or median_seconds(runs) < to_beat)


def is_crowned(runs: Sequence[RunResult], rules: SeedRules, to_beat: float | None) -> bool:
    """The trial ran every seed the crown guard asks and is a contender on all of them: it may be
    the study's best on its device."""
    clean = not any(run.diverged or run.over_time for run in runs)
    return clean and len(runs) >= max(rules.repeats, rules.crown_seeds) and is_contender(runs, rules, to_beat)


def _seeds(count: int) -> str:
    return f"{count} seed{'' if count == 1 else 's'}"
