"""What a person watching a worker sees: one timestamped line per trial, a bar on a terminal, a summary.

Log lines go to stdout, so that stderr carries nothing but errors (a bad-input run prints exactly
one `error: ...` line there) and, on a terminal, the progress bar.
"""

from __future__ import annotations

import collections
import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import optuna
import tqdm
from optuna.trial import FrozenTrial, TrialState

from objective import attributes
from objective.cli import hide_passwords
from objective.optuna_objective import is_crowned_trial

log = logging.getLogger("search")


class _TqdmHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that clears the progress bar before a line and redraws it after."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:
            self.handleError(record)


class _HidePasswords(logging.Filter):
    """No log line shows a password: not in a URL, and not the storage's own anywhere."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = hide_passwords(record.getMessage(), self.secrets), None
        return True


def setup_logging(verbose: bool = False, secrets: Iterable[str] = ()) -> None:
    handler = _TqdmHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    handler.addFilter(_HidePasswords(secrets))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's best feasible trial, by any worker; None until one exists."""
    try:
        return study.best_trial
    except ValueError:
        return None


def best_words(best: FrozenTrial) -> str:
    """`4.512 s, 0.93x the recipe (#3)`: the wall seconds a user reads, and the value."""
    seconds = best.user_attrs.get(attributes.SECONDS)
    timed = f"{seconds:.3f} s, " if isinstance(seconds, float | int) else ""
    return f"{timed}{best.value:.3f}x the recipe (#{best.number})"


def trial_line(trial: FrozenTrial, best: FrozenTrial | None) -> str:
    """`trial 7 COMPLETE value 0.962 | acc 99.12 % in 4.81 s | best 4.512 s, 0.93x the recipe (#3) | ...`"""
    attrs = trial.user_attrs
    parts = [f"trial {trial.number} {trial.state.name}"]
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        parts[0] += f" value {trial.value:.3f}"
    if attributes.ACCURACY in attrs and attributes.SECONDS in attrs:
        seeds = len(attrs.get(attributes.ACCURACIES) or [None])
        parts.append(f"acc {100 * attrs['accuracy']:.2f} % in {attrs['seconds']:.2f} s "
                     f"({seeds} seed{'' if seeds == 1 else 's'})")
    reason = attrs.get(attributes.FAIL_REASON) or attrs.get(attributes.STOPPED)
    if reason:
        parts.append(str(reason))
    parts.append(f"best {best_words(best)}" if best and best.value is not None
                 else "best: none feasible yet")
    params = compact_params(trial.params)
    if attrs.get(attributes.BASELINE):
        params += " [baseline]"
    parts.append(params)
    return " | ".join(part for part in parts if part)


def compact_params(params: dict[str, Any]) -> str:
    """`lr=0.009329 batch_size=128`: four significant digits are plenty to recognise a trial."""
    return " ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in params.items())


@dataclass
class Summary:
    """This worker's trials, by state, for the closing lines."""

    states: collections.Counter[str] = field(default_factory=collections.Counter)
    best_trial_here: FrozenTrial | None = None
    not_run: int = 0  # prefetched trials a stop came too late for (FAILED, "not run")

    def add(self, trial: FrozenTrial) -> None:
        self.states[trial.state.name] += 1
        best = self.best_trial_here
        if (trial.state == TrialState.COMPLETE and is_crowned_trial(trial) and trial.value is not None
                and (best is None or trial.value < (best.value or float("inf")))):
            self.best_trial_here = trial

    @property
    def total(self) -> int:
        return sum(self.states.values())

    def lines(self, stop_reason: str, study: optuna.Study, seconds: float) -> list[str]:
        counts = ", ".join(f"{count} {state.lower()}" for state, count in sorted(self.states.items()))
        own = (f"; its best {best_words(self.best_trial_here)}"
               if self.best_trial_here is not None and self.best_trial_here.value is not None else "")
        best = best_trial(study)
        study_best = (f"study best {best_words(best)}: {compact_params(best.params)}"
                      if best is not None and best.value is not None else "study best: none feasible yet")
        own += f"; {self.not_run} prefetched trial(s) not run, FAILED" if self.not_run else ""
        return [f"stopped: {stop_reason}",
                f"this worker ran {self.total} trial(s) in {seconds:.1f} s ({counts or 'none'}){own}",
                study_best]


class ProgressBar:
    """A tqdm bar on stderr, only when stderr is a terminal: in a log file or `docker logs` the
    carriage-return redraws would be noise, and the per-trial lines already say everything."""

    def __init__(self, total: int | None, enabled: bool) -> None:
        self.bar = (tqdm.tqdm(total=total, unit="trial", file=sys.stderr, dynamic_ncols=True)
                    if enabled and sys.stderr.isatty() else None)

    def update(self, best: FrozenTrial | None) -> None:
        if self.bar is not None:
            if best is not None and best.value is not None:
                self.bar.set_postfix_str(f"best {best_words(best)}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
