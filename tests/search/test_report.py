from __future__ import annotations

from pathlib import Path

import optuna

from search import report


def populated_study(url: str) -> optuna.Study:
    study = optuna.create_study(study_name="demo", storage=url)
    study.set_user_attr("accuracy_target", 0.99)
    for number, (accuracy, seconds) in enumerate([(0.991, 2.0), (0.985, 1.5),
                                                  (0.992, 2.5), (0.993, 1.8)]):
        trial = study.ask()
        trial.suggest_float("lr", 0.001, 0.1, log=True)
        trial.suggest_int("batch_size", 64, 512)
        trial.set_user_attr("accuracy", accuracy)
        trial.set_user_attr("seconds", seconds)
        trial.set_user_attr("baseline", number == 0)
        trial.set_constraint("accuracy_points_short", 100 * (0.99 - accuracy))
        study.tell(trial, seconds if accuracy >= 0.99 else 60 + 10 * (0.99 - accuracy) * 100)
    return study


def test_report_draws_history_importances_and_accuracy_against_seconds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    populated_study(url)
    out = tmp_path / "report.html"
    assert report.main(["--storage", url, "--study", "demo", "--out", str(out)]) == 0
    page = out.read_text()
    for expected in ("Optimization History", "Hyperparameter Importances", "Accuracy against wall seconds",
                     "baseline (seed recipe)", "target 99.0 %", "trial 3 (COMPLETE)"):
        assert expected in page, expected
