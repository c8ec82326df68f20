"""search.export: which trial is picked, the document it writes, its errors, and that the config
round-trips through `python -m objective.train`. Studies are built without training (ask/tell with
the attributes the Objective records) except in the two tests marked slow."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import psycopg
import pytest
import yaml

from objective.config import TrainConfig
from objective.optuna_objective import Objective
from objective.result import RunResult
from search import export
from studies.optuna_internals import set_constraints
from studies.spec import load_spec
from studies.storage import create_or_load, open_storage

ROOT = Path(__file__).resolve().parents[2]
MNIST = Path(os.environ.get("MNIST_DATA", ROOT.parent / "shared" / "mnist"))
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

CPU = {"device": "Intel(R) Xeon(R) Test CPU", "device_type": "cpu", "torch": "2.14.1", "threads": 2}
GPU = {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "torch": "2.14.1", "threads": 16}
SMOKE = TrainConfig(train_subset=2000, epochs=1.0)  # about a second on 2 CPU cores

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- building studies without training ----------------------------------------------------------


RECIPE_SECONDS = 4.0  # the seed recipe's time the trials are measured against


def new_study(url: str, name: str = "demo", target: float = 0.99,
              base: TrainConfig = SMOKE) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url)
    study.set_user_attr("spec", "studies/demo.toml")
    study.set_user_attr("base_config", base.to_dict())
    study.set_user_attr("accuracy_target", target)
    return study


def add_trial(study: optuna.Study, *, accuracy: float, seconds: float, lr: float = 0.01,
              fingerprint: dict[str, Any] | None = None, baseline: bool = False,
              value: float | None = None, record_config: bool = True, base: TrainConfig = SMOKE,
              crowned: bool | None = None, claim: tuple[float, float, float] | None = None) -> int:
    """One trial as objective.Objective records it; `value` overrides the penalized value, `crowned`
    whether it held the crown guard (default: when it reaches the target), `claim` its claim seeds'
    accuracy on the held-out half, on all test images, and seconds."""
    target = float(study.user_attrs["accuracy_target"])
    study.enqueue_trial({"lr": lr}, user_attrs={"baseline": True} if baseline else None)
    trial = study.ask()
    config = base.replace(lr=trial.suggest_float("lr", 0.001, 0.1, log=True))
    if record_config:
        trial.set_user_attr("config", config.to_dict())
    trial.set_user_attr("accuracy", accuracy)
    trial.set_user_attr("seconds", seconds)
    trial.set_user_attr("train_seconds", seconds * 0.9)
    trial.set_user_attr("accuracies", [accuracy])
    trial.set_user_attr("diverged", False)
    trial.set_user_attr("fingerprint", fingerprint or CPU)
    trial.set_user_attr("vs_baseline", seconds / RECIPE_SECONDS)
    trial.set_user_attr("crowned", accuracy >= target if crowned is None else crowned)
    if claim is not None:
        trial.set_user_attr("claim_accuracy", claim[0])
        trial.set_user_attr("claim_test_accuracy", claim[1])
        trial.set_user_attr("claim_seconds", claim[2])
    trial.set_constraint("accuracy_points_short", 100 * (target - accuracy))
    if value is None:
        value = seconds if accuracy >= target else 120.0 + 100 * (target - accuracy)
    study.tell(trial, value)
    return trial.number


def snapshot(url: str, name: str = "demo") -> list[Any]:
    """Everything an export could have changed."""
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials()
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    return [study.user_attrs, system_attrs,
            [(t.number, t.state, t.values, t.params, t.user_attrs, t.system_attrs, t.datetime_complete)
             for t in trials]]


def run_export(*args: str) -> tuple[int, str, str]:
    """search.export in this process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = export.main(list(args))
        except SystemExit as exit_:  # argparse
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


def one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A fresh, empty Postgres database (its name) for one test, dropped afterwards."""
    name = f"fms_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def read_only_role(postgres_db: str) -> Iterator[str]:
    """A login role that may only SELECT in `postgres_db` (created after the study's tables)."""
    role = f"fms_ro_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
    yield role
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{postgres_db}" WITH (FORCE)')
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def grant_select(database: str, role: str) -> None:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}", autocommit=True) as db:
        db.execute(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
        db.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        db.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')


@pytest.fixture(scope="module")
def subprocess_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not (MNIST / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found at {MNIST}")
    cache = tmp_path_factory.mktemp("mnist-cache")
    return {**os.environ, "MNIST_DATA": str(MNIST), "FAST_MNIST_CACHE": str(cache),
            "PYTHONPATH": str(ROOT)}


# -- which trial --------------------------------------------------------------------------------


def test_picks_the_best_feasible_trial_not_the_best_value(sqlite_url: str, tmp_path: Path) -> None:
    study = new_study(sqlite_url)
    add_trial(study, accuracy=0.991, seconds=3.0, baseline=True)
    fast_but_short = add_trial(study, accuracy=0.985, seconds=0.5, lr=0.05, value=0.5)  # lowest value
    best = add_trial(study, accuracy=0.990, seconds=2.0, lr=0.02)
    add_trial(study, accuracy=0.995, seconds=2.5, lr=0.03)
    study.ask()  # a RUNNING trial and a FAILED one are never candidates
    failed = study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    before = snapshot(sqlite_url)

    out = tmp_path / "best.json"
    started = datetime.now(UTC).replace(microsecond=0)  # exported_at is to the second
    code, stdout, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", str(out))
    ended = datetime.now(UTC)
    assert code == 0, err
    document = json.loads(out.read_text())
    assert document["trial"] == best != fast_but_short
    assert document["study"] == "demo"
    assert document["baseline"] is False
    assert document["config"] == SMOKE.replace(lr=0.02).to_dict()
    assert document["metrics"] == {"accuracy": 0.990, "seconds": 2.0, "train_seconds": 1.8, "value": 2.0,
                                   "accuracy_target": 0.99, "accuracies": [0.990], "vs_baseline": 0.5}
    assert document["fingerprint"] == CPU
    provenance = document["provenance"]
    assert provenance["storage"] == "sqlite"
    assert provenance["optuna"] == optuna.__version__
    assert provenance["spec"] == "studies/demo.toml"
    exported_at = datetime.fromisoformat(provenance["exported_at"])
    assert started <= exported_at <= ended  # the time of the export, in UTC
    assert "3 crowned trials of 4 complete trials" in document["selection"]
    assert "the only fingerprint" in document["selection"]
    assert f"selected trial {best}" in err and document["selection"] in err
    assert stdout == ""
    assert snapshot(sqlite_url) == before  # an export only reads


def test_the_baseline_is_eligible(sqlite_url: str, tmp_path: Path) -> None:
    study = new_study(sqlite_url)
    baseline = add_trial(study, accuracy=0.992, seconds=1.0, baseline=True)
    add_trial(study, accuracy=0.993, seconds=1.5, lr=0.02)
    code, stdout, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", "-")
    assert code == 0, err
    document = json.loads(stdout)
    assert document["trial"] == baseline and document["baseline"] is True
    assert "seed-recipe baseline" in document["selection"]


def test_config_falls_back_to_base_config_and_params(sqlite_url: str, tmp_path: Path) -> None:
    study = new_study(sqlite_url)
    add_trial(study, accuracy=0.992, seconds=1.0, lr=0.025, record_config=False)
    code, stdout, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", "-")
    assert code == 0, err
    assert json.loads(stdout)["config"] == SMOKE.replace(lr=0.025).to_dict()


def test_compares_within_one_fingerprint(sqlite_url: str, tmp_path: Path) -> None:
    study = new_study(sqlite_url)
    cpu_best = add_trial(study, accuracy=0.991, seconds=2.0)
    add_trial(study, accuracy=0.991, seconds=3.0, lr=0.02)
    add_trial(study, accuracy=0.980, seconds=1.0, lr=0.03)
    gpu_best = add_trial(study, accuracy=0.992, seconds=0.5, lr=0.04, fingerprint=GPU)
    add_trial(study, accuracy=0.993, seconds=0.7, lr=0.05, fingerprint=GPU)

    code, stdout, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", "-")
    assert code == 0, err
    document = json.loads(stdout)  # 3 CPU trials against 2 GPU ones: the CPU is the most common
    assert document["trial"] == cpu_best and document["fingerprint"] == CPU
    assert "the most common of 2 fingerprints" in document["selection"]
    assert CPU["device"] in document["selection"]

    for name in (GPU["device"], "h100"):  # the full name, or an unambiguous part of it
        code, stdout, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", "-",
                                       "--fingerprint", name)
        assert code == 0, err
        document = json.loads(stdout)
        assert document["trial"] == gpu_best and document["fingerprint"] == GPU
        assert "--fingerprint" in document["selection"]

    code, _, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", "-",
                              "--fingerprint", "TPU v5")
    assert code == 2
    assert "TPU v5" in one_error_line(err) and GPU["device"] in err and CPU["device"] in err


def test_a_feasible_trial_that_was_not_crowned_is_never_picked(sqlite_url: str) -> None:
    # its one seed cleared the bar but it never faced the crown guard: what a slower device's
    # cut-short trials looked like when the time to beat was study-wide
    study = new_study(sqlite_url)
    crowned = add_trial(study, accuracy=0.991, seconds=2.0)
    add_trial(study, accuracy=0.992, seconds=1.0, lr=0.02, crowned=False)
    code, stdout, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", "-")
    assert code == 0, err
    assert json.loads(stdout)["trial"] == crowned


def test_the_document_lists_the_best_crowned_trial_of_every_fingerprint(sqlite_url: str) -> None:
    study = new_study(sqlite_url)
    cpu = add_trial(study, accuracy=0.991, seconds=2.0)
    add_trial(study, accuracy=0.991, seconds=2.5, lr=0.02)
    gpu = add_trial(study, accuracy=0.992, seconds=0.5, lr=0.04, fingerprint=GPU,
                    claim=(0.9915, 0.9918, 0.52))
    add_trial(study, accuracy=0.992, seconds=0.4, lr=0.05, fingerprint={**GPU, "device": "NVIDIA L4"},
              crowned=False)
    code, stdout, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", "-")
    assert code == 0, err
    rows = json.loads(stdout)["per_fingerprint"]
    assert [(row["trial"], row["seconds"]) for row in rows] == [(cpu, 2.0), (gpu, 0.5)]
    assert GPU["device"] in rows[1]["fingerprint"]
    assert (rows[1]["claim_accuracy"], rows[1]["claim_test_accuracy"], rows[1]["claim_seconds"]) == (
        0.9915, 0.9918, 0.52)
    assert "claim_accuracy" not in rows[0]
    code, _, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", "-", "--fingerprint", "L4")
    assert code == 2 and "no crowned trial" in one_error_line(err) and "NVIDIA L4" in err


def test_most_common_fingerprint_without_a_feasible_trial_is_an_error_with_a_hint(
        sqlite_url: str, tmp_path: Path) -> None:
    study = new_study(sqlite_url)
    for lr in (0.01, 0.02):
        add_trial(study, accuracy=0.95, seconds=1.0, lr=lr)
    add_trial(study, accuracy=0.992, seconds=0.5, fingerprint=GPU)
    out = tmp_path / "best.json"
    code, _, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", str(out))
    assert code == 2
    assert "no crowned trial" in one_error_line(err) and GPU["device"] in err and "--fingerprint" in err
    assert not out.exists()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names
def test_export_reads_the_record_the_worker_writes(tmp_path: Path) -> None:
    """Trials written as a worker writes them: the mnist_fast study as create_or_load makes it (the
    seed recipe and its three start points enqueued), the real Objective with the worker's
    set_constraints (studies/optuna_internals.py), on a device that answers by config instead of
    training. Export reads the attributes and constraints the objective wrote, not a fixture's."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = load_spec(ROOT / "studies" / "mnist_fast.toml")  # bar 99.13 %, crown guard and claim seeds
    study, created = create_or_load(spec, open_storage(url, heartbeat=False), sampler_seed=0)
    assert created
    recipe = spec.base
    fingerprint = {**CPU, "cores": 2, "bf16_autocast": False}  # what objective/timed_run.py records

    def run(config: TrainConfig, time_limit: float) -> RunResult:
        # (selection half, held-out half, seconds): the recipe takes 4 s; more epochs are accurate
        # but slower than the recipe; batch 512 is accurate and faster; BatchNorm is fast but short
        if config.epochs > recipe.epochs:
            accuracy, holdout, seconds = 0.9960, 0.9958, 5.0
        elif config.batch_size > recipe.batch_size:
            accuracy, holdout, seconds = 0.9950, 0.9940, 3.0
        elif config.batch_norm != recipe.batch_norm:
            accuracy, holdout, seconds = 0.9850, 0.9850, 2.0
        else:
            accuracy, holdout, seconds = 0.9915, 0.9915, 4.0
        return RunResult(seed=config.seed, accuracy=accuracy, holdout_accuracy=holdout, seconds=seconds,
                         train_seconds=seconds - 0.5, steps=235, diverged=False, over_time=False,
                         fingerprint=fingerprint)

    study.optimize(Objective(spec.space, spec.base, spec.objective, run, set_constraints=set_constraints),
                   n_trials=4)
    trials = study.get_trials()
    assert [t.user_attrs["crowned"] for t in trials] == [False, False, True, False]
    # the record as the worker leaves it: named constraints and the dashboard's list, one slower than
    # the recipe at full accuracy (epochs 1.25), one short of the bar (BatchNorm)
    assert [t.system_attrs["constraints"] for t in trials] == [
        [pytest.approx(-0.02), 0.0], [pytest.approx(-0.47), 0.25], [pytest.approx(-0.37), -0.25],
        [pytest.approx(0.63), -0.5]]
    assert trials[1].constraints["slower_than_recipe"] == 0.25

    code, stdout, err = run_export("--storage", url, "--study", "mnist_fast", "--out", "-")
    assert code == 0, err
    document = json.loads(stdout)
    assert document["trial"] == 2 and document["baseline"] is False
    assert document["config"] == recipe.replace(batch_size=512, lr=0.02).to_dict()
    assert document["fingerprint"] == fingerprint
    assert document["metrics"] == {
        "accuracy": 0.995, "seconds": 3.0, "train_seconds": 2.5, "value": 0.75, "accuracy_target": 0.99,
        "accuracies": [0.995] * 20, "vs_baseline": 0.75,  # the crown guard's 20 seeds
        "claim_accuracy": 0.994, "claim_test_accuracy": 0.9945, "claim_seconds": 3.0,
        "claim_accuracies": [0.994] * 10}  # the claim's 10 seeds, on the held-out half
    assert "1 crowned trial of 4 complete trials" in document["selection"]
    assert [(row["trial"], row["claim_accuracy"]) for row in document["per_fingerprint"]] == [(2, 0.994)]
    assert document["provenance"]["spec"] == spec.source


# -- errors -------------------------------------------------------------------------------------


def test_no_feasible_trial_is_one_line_and_exit_2(sqlite_url: str, tmp_path: Path) -> None:
    study = new_study(sqlite_url)
    add_trial(study, accuracy=0.95, seconds=1.0)
    add_trial(study, accuracy=0.97, seconds=1.0, lr=0.02)
    out = tmp_path / "best.json"
    code, _, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", str(out))
    assert code == 2 and "no crowned trial" in one_error_line(err)
    assert not out.exists()

    new_study(sqlite_url, name="empty")
    code, _, err = run_export("--storage", sqlite_url, "--study", "empty", "--out", str(out))
    assert code == 2 and "no COMPLETE trial" in one_error_line(err)


def test_a_missing_sqlite_file_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    code, _, err = run_export("--storage", f"sqlite:///{missing}", "--study", "demo",
                              "--out", str(tmp_path / "b.json"))
    assert code == 2 and "no SQLite database" in one_error_line(err)
    assert not missing.exists()
    unrelated = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(unrelated)) as db:
        db.execute("CREATE TABLE notes (text)")
        db.commit()
    code, _, err = run_export("--storage", f"sqlite:///{unrelated}", "--study", "demo",
                              "--out", str(tmp_path / "b.json"))
    assert code == 2 and "no Optuna tables" in one_error_line(err)
    with contextlib.closing(sqlite3.connect(unrelated)) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == [("notes",)]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgress://u:hunter2@localhost/db", "unknown database"),
        ("postgresql+psycopg://postgres:hunter2@127.0.0.1:1/none", "cannot connect"),  # nothing listens
    ],
)
def test_storage_errors_are_one_line_with_the_password_masked(url: str, message: str,
                                                              tmp_path: Path) -> None:
    code, _, err = run_export("--storage", url, "--study", "demo", "--out", str(tmp_path / "b.json"))
    assert code == 2 and message in one_error_line(err) and "hunter2" not in err


def test_unwritable_out_is_refused_before_anything_else(sqlite_url: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    study = new_study(sqlite_url)
    add_trial(study, accuracy=0.992, seconds=1.0)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    opened: list[str] = []  # what the export got to: the study, or a verification
    monkeypatch.setattr(export, "load_existing", lambda *args: opened.append("study"))
    monkeypatch.setattr(export, "run_verification", lambda *args: opened.append("verification"))
    for out in (a_file / "best.json", tmp_path):
        code, _, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", str(out),
                                  "--verify", "1000", "--data-dir", str(tmp_path / "no-mnist"))
        assert code == 2 and f"cannot write {out}" in one_error_line(err)
    assert opened == []
    assert not list(tmp_path.glob("**/*.probe")) and not list(tmp_path.glob("**/.*.tmp"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--verify", "0"], "--verify must be >= 1"),
        (["--verify", "-3"], "--verify must be >= 1"),
        (["--verify", "two"], "invalid int value"),
        (["--format", "xml"], "unknown --format 'xml'"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_are_one_line(args: list[str], message: str, sqlite_url: str, tmp_path: Path) -> None:
    study = new_study(sqlite_url)
    add_trial(study, accuracy=0.992, seconds=1.0)
    out = tmp_path / "best.json"
    code, _, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", str(out), *args)
    assert code == 2 and message in one_error_line(err)
    assert not out.exists()


# -- formats ------------------------------------------------------------------------------------


def test_json_yaml_and_toml_hold_the_same_document(sqlite_url: str, tmp_path: Path) -> None:
    study = new_study(sqlite_url)
    study.set_user_attr("spec", None)  # TOML has no null: such values are left out there
    add_trial(study, accuracy=0.992, seconds=1.0)
    documents = {}
    for fmt, args in {"json": [], "yaml": ["--format", "yaml"], "toml": ["--format", "TOML"]}.items():
        out = tmp_path / f"best.{fmt}.out"
        code, _, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", str(out), *args)
        assert code == 0, err
        text = out.read_text()
        documents[fmt] = {"json": json.loads, "yaml": yaml.safe_load, "toml": tomllib.loads}[fmt](text)
    for document in documents.values():
        document["provenance"].pop("exported_at")
    assert documents["json"]["provenance"]["spec"] is None
    assert documents["yaml"] == documents["json"]
    provenance = {k: v for k, v in documents["json"]["provenance"].items() if v is not None}
    expected_toml = {**documents["json"], "provenance": provenance}
    assert documents["toml"] == expected_toml
    assert TrainConfig(**documents["toml"]["config"]) == SMOKE


def test_format_follows_the_out_suffix(sqlite_url: str, tmp_path: Path) -> None:
    study = new_study(sqlite_url)
    add_trial(study, accuracy=0.992, seconds=1.0)
    for name, load in (("best.yaml", yaml.safe_load), ("best.yml", yaml.safe_load),
                       ("best.toml", tomllib.loads), ("best.txt", json.loads)):
        code, _, err = run_export("--storage", sqlite_url, "--study", "demo", "--out", str(tmp_path / name))
        assert code == 0, err
        assert load((tmp_path / name).read_text())["config"] == SMOKE.to_dict()


# -- Postgres -----------------------------------------------------------------------------------


def test_postgres_export_with_a_read_only_role(postgres_db: str, read_only_role: str, tmp_path: Path) -> None:
    """A role that can only SELECT exports fine, so the export provably writes nothing; the
    password in the URL (trust auth ignores it) and the host never reach the document."""
    study = new_study(f"postgresql+psycopg://postgres@127.0.0.1:5432/{postgres_db}")
    add_trial(study, accuracy=0.991, seconds=2.0, baseline=True)
    best = add_trial(study, accuracy=0.993, seconds=1.5, lr=0.02)
    add_trial(study, accuracy=0.98, seconds=1.0, lr=0.03, value=1.0)
    study._storage.remove_session()
    grant_select(postgres_db, read_only_role)
    url = f"postgresql+psycopg://{read_only_role}:hunter2@127.0.0.1:5432/{postgres_db}"
    out = tmp_path / "best.json"
    code, _, err = run_export("--storage", url, "--study", "demo", "--out", str(out))
    assert code == 0, err
    text = out.read_text()
    document = json.loads(text)
    assert document["trial"] == best
    assert document["provenance"]["storage"] == "postgresql"
    for secret in ("hunter2", "127.0.0.1", read_only_role, postgres_db):
        assert secret not in text and secret not in err

    code, _, err = run_export("--storage", url, "--study", "nope", "--out", str(out))
    assert code == 2 and "demo" in one_error_line(err) and "hunter2" not in err


# -- the real thing: training ------------------------------------------------------------------


@pytest.mark.slow
def test_exported_config_round_trips_through_objective_train(sqlite_url: str, tmp_path: Path,
                                                             subprocess_env: dict[str, str]) -> None:
    study = new_study(sqlite_url, target=0.9)
    add_trial(study, accuracy=0.93, seconds=1.2, lr=0.015, baseline=True)
    out = tmp_path / "best.json"
    exported = subprocess.run([sys.executable, "-m", "search.export", "--storage", sqlite_url,
                               "--study", "demo", "--out", str(out)],
                              cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    config = json.loads(out.read_text())["config"]
    trained = subprocess.run([sys.executable, "-m", "objective.train", "--config", str(out),
                              "--data-dir", str(MNIST), "--seeds", "0", "--json", "--device", "cpu"],
                             cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert {k: v for k, v in summary["config"].items() if k != "seed"} == \
        {k: v for k, v in config.items() if k != "seed"}
    assert summary["config"] == SMOKE.replace(lr=0.015).to_dict()
    assert summary["runs"][0]["accuracy"] > 0.2  # 8 steps on 2,000 images: trained, above chance


@pytest.mark.slow
def test_verify_retrains_on_fresh_seeds(sqlite_url: str, tmp_path: Path,
                                        subprocess_env: dict[str, str]) -> None:
    base = TrainConfig(train_subset=6000, epochs=1.0)
    study = new_study(sqlite_url, target=0.9, base=base)
    add_trial(study, accuracy=0.95, seconds=1.5, base=base, baseline=True)
    out = tmp_path / "best.json"
    result = subprocess.run([sys.executable, "-m", "search.export", "--storage", sqlite_url,
                             "--study", "demo", "--out", str(out), "--verify", "2", "--device", "cpu",
                             "--threads", "1"],
                            cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    verification = document["verification"]
    assert set(verification) >= {"seeds", "pass_rate", "mean_accuracy", "std_accuracy", "median_seconds",
                                 "runs", "fingerprint", "target"}
    assert verification["seeds"] == [1000, 1001]
    assert verification["target"] == 0.9
    runs = verification["runs"]
    assert [run["seed"] for run in runs] == [1000, 1001]
    accuracies = [run["test_accuracy"] for run in runs]  # all test images, as the recipe's figure
    assert verification["pass_rate"] == sum(a >= 0.9 for a in accuracies) / 2
    assert verification["mean_accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert verification["mean_holdout_accuracy"] == pytest.approx(
        sum(run["holdout_accuracy"] for run in runs) / 2)
    assert verification["std_accuracy"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2 ** 0.5)
    assert verification["median_seconds"] == pytest.approx((runs[0]["seconds"] + runs[1]["seconds"]) / 2)
    assert all(run["seconds"] > 0 and 0.5 < run["test_accuracy"] <= 1 for run in runs)
    assert verification["fingerprint"]["device_type"] == "cpu"
    assert "verify seed 1000" in result.stderr and "pass rate" in result.stderr
    assert document["config"] == base.to_dict()  # verification never changes the exported config


def test_a_database_without_optuna_tables_is_refused_and_left_alone(postgres_db: str, tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{postgres_db}"
    code, _, err = run_export("--storage", url, "--study", "demo", "--out", str(tmp_path / "b.json"))
    assert code == 2 and "no Optuna tables" in one_error_line(err)
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{postgres_db}") as db:
        tables = db.execute("SELECT count(*) FROM information_schema.tables "
                            "WHERE table_schema = 'public'").fetchone()
    assert tables == (0,)  # the export created nothing
