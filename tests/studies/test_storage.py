from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from studies.spec import load_spec
from studies.storage import (
    DEFAULT_STORAGE,
    StorageError,
    create_or_load,
    mask,
    open_storage,
    resolve_url,
    wait_until_ready,
)

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "studies" / "smoke.toml"


def run_together(count: int, script: str, *args: str) -> list[str]:
    """`count` processes of `script` started at once; their stdouts, each having exited 0."""
    processes = [subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(count)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err for _, err in outputs]
    return [out for out, _ in outputs]


def test_url_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    assert resolve_url(None) == DEFAULT_STORAGE == "sqlite:///optuna.db"
    monkeypatch.setenv("OPTUNA_STORAGE", "sqlite:///env.db")
    assert resolve_url(None) == "sqlite:///env.db"
    assert resolve_url("sqlite:///cli.db") == "sqlite:///cli.db"


def test_mask_hides_the_password() -> None:
    masked = mask("postgresql+psycopg://alice:s3cret@db.example/optuna")
    assert "s3cret" not in masked and "alice" in masked and "***" in masked


def test_sqlite_storage_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    open_storage(f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgress://u:hunter2@localhost/db", "unknown database 'postgress'"),
        ("not a url", "is not a database URL"),
        ("postgresql+psycopg://postgres:hunter2@127.0.0.1:5432/no_such_db_fms", "cannot connect"),
    ],
)
def test_bad_urls_raise_one_line_without_the_password(url: str, message: str) -> None:
    with pytest.raises(StorageError) as raised:
        open_storage(url, attempts=1)
    assert message in str(raised.value)
    assert "hunter2" not in str(raised.value)
    assert "\n" not in str(raised.value)


def test_create_or_load_enqueues_the_baseline_once(tmp_path: Path) -> None:
    spec = load_spec(SMOKE)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study, created = create_or_load(spec, storage, sampler_seed=0)
    again, created_again = create_or_load(spec, storage, sampler_seed=1)
    assert (created, created_again) == (True, False)
    trials = again.get_trials(deepcopy=False)
    assert len(trials) == 1
    assert trials[0].state == optuna.trial.TrialState.WAITING
    assert trials[0].user_attrs == {"baseline": True}
    assert study.user_attrs["base_config"]["train_subset"] == 6000


def test_a_study_its_creator_never_finished_is_an_error_not_a_silent_join(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    half = optuna.create_study(storage=storage, study_name="smoke")  # as a creator that died early
    with pytest.raises(StorageError, match=r"not whole after 0\.2 s"):
        wait_until_ready(half, patience=0.2)


def test_concurrent_creators_make_one_study_and_one_baseline(postgres_url: str) -> None:
    """Four processes start at the same moment against a fresh Postgres database."""
    script = (
        "import sys; from studies.spec import load_spec; from studies.storage import open_storage, "
        "create_or_load\n"
        "spec = load_spec(sys.argv[1]); storage = open_storage(sys.argv[2])\n"
        "study, created = create_or_load(spec, storage, 0)\n"
        "print(int(created), 'created_at' in study.user_attrs, len(study.get_trials()))"
    )
    outputs = [out.split() for out in run_together(4, script, str(SMOKE), postgres_url)]
    assert sum(int(created) for created, _, _ in outputs) == 1
    # A joiner returns only once the study is whole: its budget's start and its baseline written.
    assert all(whole == "True" and trials == "1" for _, whole, trials in outputs), outputs
    study = optuna.load_study(study_name="smoke", storage=postgres_url)
    assert [t.user_attrs for t in study.get_trials(deepcopy=False)] == [{"baseline": True}]


@pytest.mark.parametrize("url_fixture", ["sqlite_url", "postgres_url"])
def test_concurrent_workers_take_each_waiting_trial_once(url_fixture: str,
                                                         request: pytest.FixtureRequest) -> None:
    """Four processes ask() from one study holding 120 waiting trials: each is taken by exactly
    one of them. (On SQLite, reading WAITING and writing RUNNING were two steps; two workers could
    both read WAITING and both run the trial.)"""
    url: str = request.getfixturevalue(url_fixture)
    study = optuna.create_study(study_name="race", storage=open_storage(url, heartbeat=False))
    for index in range(120):
        study.enqueue_trial({"x": index}, user_attrs={"enqueued": True}, skip_if_exists=False)
    script = (
        "import sys, optuna; from studies.storage import open_storage\n"
        "study = optuna.load_study(study_name='race', storage=open_storage(sys.argv[1], heartbeat=False))\n"
        "while (trial := study.ask()).user_attrs.get('enqueued'):\n"
        "    print(trial.number)\n"
    )
    taken = sorted(int(line) for out in run_together(4, script, url) for line in out.split())
    assert taken == list(range(120))
