"""The study's note, as optuna-dashboard shows it above the trials: what a person browsing needs
to read the study at a glance (what is optimized, what passes, the baseline, how the best is
verified)."""

from __future__ import annotations

import math

from studies.spec import StudySpec


def study_note(spec: StudySpec, baseline_seconds: float | None, device: str) -> str:
    """Markdown for `optuna_dashboard.save_note`. `baseline_seconds`: the seed recipe's time (the
    yardstick) measured by the worker that created the study, on `device`."""
    rules = spec.objective
    bar = 100 * rules.required_accuracy
    budget = [f"{spec.n_trials} finished trials"]
    if spec.minutes is not None:
        budget.insert(0, f"{spec.minutes:g} minutes of wall time")
    lines = [
        f"## {spec.name}",
        f"Spec `{spec.source or '(inline)'}`; sampler {spec.sampler_name}; "
        f"budget {' or '.join(budget)}, whichever comes first.",
        "",
        f"**Objective**: *time / recipe's time, penalized*, minimized: a trial's median seconds over "
        f"the seed recipe's on the same device (its worker's yardstick: the median of "
        f"{rules.yardstick_seeds} run(s), every 5 minutes), so devices compare; the wall "
        f"seconds are the `seconds` attribute. A trial is **feasible** when it dominates the "
        f"seed recipe: its mean test accuracy reaches **{bar:.2f} %** (target "
        f"{100 * rules.accuracy_target:g} % plus a margin of {100 * rules.accuracy_margin:.2f} points) "
        f"and its median seconds are at most the recipe's on the same device; the constraints "
        f"`accuracy_points_short` and `slower_than_recipe` (> 0: missed) mark the others. "
        f"Feasible value: that ratio, at most 1. Infeasible: the larger of the ratio and 1, plus "
        f"{rules.penalty_per_point:g} per point below {bar:.2f} % (for at most "
        f"{rules.max_penalty_points:g} points), so it sits above every feasible trial.",
        "",
        f"**Seeds**: a trial runs up to {rules.repeats} seeds, one at a time, and stops early once "
        f"clearly infeasible, or more than {100 * rules.slower_margin:g} % slower than its device's best "
        f"(its median, and each of its last {rules.slower_runs} run(s)"
        + (f", or its last run alone by more than {100 * rules.slower_margin_one_run:g} %)."
           if math.isfinite(rules.slower_margin_one_run) else ")."),
        f"**Crown guard**: a trial becomes its device's best (`crowned`) only after holding the bar and "
        f"its speed on {rules.crown_seeds} seeds. "
        + (f"It then runs {rules.claim_seeds} seeds that decide nothing: its claim (`claim_accuracy`, "
           "`claim_seconds`), free of the luck that selected it. " if rules.claim_seeds else "")
        + "Export picks the best crowned trial of one device.",
    ]
    if baseline_seconds is not None:
        lines += ["", f"**Baseline** (the seed recipe, enqueued first): {baseline_seconds:.3f} s "
                  f"on {device}, timed by the worker that created the study; a run past "
                  f"{rules.limit_vs_baseline:g}x that is stopped. {len(spec.starts)} start point(s) "
                  "near it follow the baseline."]
    lines += ["", "**Verify the winner on fresh seeds**: `python -m search.export --study "
              f"{spec.name} --out best.json --verify 10`."]
    return "\n".join(lines) + "\n"
