"""`python -m search.report`: one HTML page that shows what a study found.

    python -m search.report --storage sqlite:///optuna.db --study mnist_fast --out report.html

The best crowned trial on each fingerprint (the table export's `per_fingerprint` holds), then three
figures: the optimization history, the parameter importances (Optuna 5's default PED-ANOVA), and
accuracy against seconds with the target line and the seed-recipe baseline marked. plotly.js is
embedded, so the page opens offline.
"""

from __future__ import annotations

import argparse
import html
import sys
import warnings
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from objective import attributes
from objective.cli import OneLineParser
from objective.errors import UserError
from search.export import accuracy_target, check_writable, per_fingerprint, write_atomic
from studies.spec import validate_study_name
from studies.storage import load_existing, resolve_url


def accuracy_vs_seconds(trials: list[FrozenTrial], target: float) -> go.Figure:
    measured = [t for t in trials
                if attributes.ACCURACY in t.user_attrs and attributes.SECONDS in t.user_attrs]
    baseline = [t for t in measured if t.user_attrs.get(attributes.BASELINE)]
    searched = [t for t in measured if not t.user_attrs.get(attributes.BASELINE)]
    figure = go.Figure()
    for name, group, marker in (("search", searched, {"size": 8}),
                                ("baseline (seed recipe)", baseline, {"size": 16, "symbol": "star"})):
        figure.add_trace(go.Scatter(
            x=[t.user_attrs[attributes.SECONDS] for t in group],
            y=[100 * t.user_attrs[attributes.ACCURACY] for t in group],
            mode="markers", name=name, marker=marker,
            text=[f"trial {t.number} ({t.state.name})" for t in group],
        ))
    figure.add_hline(y=100 * target, line_dash="dash", annotation_text=f"target {100 * target:.1f} %")
    figure.update_layout(title="Accuracy against wall seconds", xaxis_title="seconds (timed span)",
                         yaxis_title="accuracy on the selection half of the test images (%)")
    return figure


def figures(study: optuna.Study) -> list[go.Figure]:
    trials = study.get_trials(deepcopy=False)
    target = accuracy_target(study.user_attrs)
    shown = [optuna.visualization.plot_optimization_history(study)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) >= 2 and len({str(t.params) for t in complete}) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shown.append(optuna.visualization.plot_param_importances(study))
    shown.append(accuracy_vs_seconds(trials, target))
    return shown


def winners_table(study: optuna.Study) -> str:
    rows = per_fingerprint(study.get_trials(deepcopy=False))
    if not rows:
        return "<p>No crowned trial yet on any device.</p>"
    cells = "".join(
        f"<tr><td>{html.escape(row['fingerprint'])}</td><td>{row['trial']}</td>"
        f"<td>{row['seconds']:.4f}</td><td>{100 * row['accuracy']:.3f} %</td>"
        f"<td>{_percent(row.get('claim_accuracy'))}</td><td>{_percent(row.get('claim_test_accuracy'))}</td>"
        f"<td>{row['value']:.4f}</td></tr>"
        for row in rows)
    return ("<h2>Best crowned trial per device</h2><table><tr><th>fingerprint</th><th>trial</th>"
            "<th>seconds</th><th>accuracy (selection half)</th><th>claim (held-out half, fresh seeds)</th>"
            f"<th>claim (all test images)</th><th>time / recipe's</th></tr>{cells}</table>")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.3f} %"


def render(study: optuna.Study) -> str:
    parts = [winners_table(study)]
    for index, figure in enumerate(figures(study)):
        parts.append(figure.to_html(full_html=False, include_plotlyjs=index == 0))
    title = html.escape(f"Study {study.study_name}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1>{''.join(parts)}</body></html>")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m search.report", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", help="storage URL (default: $OPTUNA_STORAGE or sqlite:///optuna.db)")
    parser.add_argument("--study", required=True)
    parser.add_argument("--out", default="report.html")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = resolve_url(args.storage)
    try:
        validate_study_name(args.study)
        check_writable(Path(args.out))  # before reading: a bad path is the answer, not a late surprise
        study = load_existing(url, args.study)  # never creates a database, tables or a study
        write_atomic(Path(args.out), render(study))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({len(study.trials)} trials of {args.study})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
