"""The study's note, as optuna-dashboard shows it above the trials: what a person browsing needs
to read the study at a glance (what is optimized, what passes, the baseline, how the best is
verified)."""

from __future__ import annotations

from studies.spec import StudySpec


def study_note(spec: StudySpec, baseline_seconds: float | None, device: str) -> str:
    """Markdown for `optuna_dashboard.save_note`. `baseline_seconds`: the seed recipe's one-seed
    time measured by the worker that created the study, on `device`."""
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
        f"**Objective**: *penalized seconds*, minimized. A trial is **feasible** when it dominates the "
        f"seed recipe: its mean test accuracy reaches **{bar:.2f} %** (target "
        f"{100 * rules.accuracy_target:g} % plus a margin of {100 * rules.accuracy_margin:.2f} points) "
        f"and its median seconds are at most the recipe's on the same device; the constraints "
        f"`accuracy_points_short` and `slower_than_recipe` (> 0: missed) mark the others. "
        f"Feasible value: the median seconds of its seeds. Infeasible: the larger of its seconds and "
        f"the recipe's, plus {rules.penalty_per_point:g}x the recipe's seconds per point below "
        f"{bar:.2f} % (for at most {rules.max_penalty_points:g} points), so it sits above every feasible "
        "trial.",
        "",
        f"**Seeds**: a trial runs up to {rules.repeats} seeds, one at a time, and stops early once "
        f"clearly infeasible or more than {100 * rules.slower_margin:g} % slower than the best.",
        f"**Crown guard**: a trial becomes the best only after holding the bar and its speed on "
        f"{rules.crown_seeds} seeds; the best trial's accuracy and seconds are over those seeds.",
    ]
    if baseline_seconds is not None:
        lines += ["", f"**Baseline** (the seed recipe, enqueued first): {baseline_seconds:.3f} s for one "
                  f"seed on {device}, timed by the worker that created the study; a run past "
                  f"{rules.limit_vs_baseline:g}x that is stopped. {len(spec.starts)} start point(s) "
                  "near it follow the baseline."]
    lines += ["", "**Verify the winner on fresh seeds**: `python -m search.export --study "
              f"{spec.name} --out best.json --verify 10`."]
    return "\n".join(lines) + "\n"
