"""The real optuna-dashboard, run as a subprocess on a loopback port, reading the SQLite study the
project writes: its HTTP API must show the study, its trials and the attributes the objective
records, and polling it while workers write must neither fail nor lock the workers out.

API routes (optuna_dashboard/_app.py): GET /api/studies -> {"study_summaries": [{study_id,
study_name, ...}]}; GET /api/studies/<id>?after=N -> {"name", "trials": [{number, state, values,
user_attrs: [{key, value}], ...}], "union_user_attrs", ...}. Attribute values arrive as strings:
numbers via str(), everything else (lists, dicts) as JSON."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from objective.config import TrainConfig
from objective.optuna_objective import METRIC_NAME, Objective
from objective.result import RunResult
from search import export
from studies.note import study_note
from studies.optuna_internals import set_constraints
from studies.spec import load_spec
from studies.storage import create_or_load, open_storage
from tests.search.workers import FAST, QUICK, Spawn, account, spec_file

ROOT = Path(__file__).resolve().parents[2]
SMOKE_SPEC = ROOT / "studies" / "smoke.toml"
HOST = "127.0.0.1"  # loopback only, always
# Loopback needs no proxy, whatever the environment says.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- the dashboard process -----------------------------------------------------------------------


def dashboard_command() -> list[str]:
    script = Path(sys.executable).parent / "optuna-dashboard"
    if script.exists():
        return [str(script)]
    # optuna_dashboard has no __main__ module; its console script calls this.
    return [sys.executable, "-c", "from optuna_dashboard._cli import main; main()"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def get(base: str, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    """(status, parsed JSON body or text) of GET base+path; HTTP errors are returned, not raised."""
    try:
        with HTTP.open(base + path, timeout=timeout) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode(errors="replace")
    with contextlib.suppress(ValueError):
        return status, json.loads(body)
    return status, body


@contextlib.contextmanager
def dashboard(url: str, log: Path, start_timeout: float = 60.0) -> Iterator[str]:
    """optuna-dashboard on `url`, serving on a free loopback port; yields its base URL and always
    stops it."""
    port = free_port()
    base = f"http://{HOST}:{port}"
    with log.open("w") as sink:
        process = subprocess.Popen([*dashboard_command(), url, "--host", HOST, "--port", str(port)],
                                   stdout=sink, stderr=subprocess.STDOUT, cwd=log.parent)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"optuna-dashboard exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if get(base, "/api/meta", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"optuna-dashboard did not serve {base} within {start_timeout:.0f} s:\n"
                            f"{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def study_id(base: str, name: str) -> int | None:
    status, body = get(base, "/api/studies")
    assert status == 200, body
    ids = [s["study_id"] for s in body["study_summaries"] if s["study_name"] == name]
    return ids[0] if ids else None


def attrs(serialized: list[dict[str, str]]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in serialized}


def assert_trials_match_storage(shown: list[dict[str, Any]], stored: list[optuna.trial.FrozenTrial]) -> None:
    """The dashboard's trials are the storage's, with the objective's attributes intact."""
    assert [t["number"] for t in shown] == [t.number for t in stored]
    for served, trial in zip(shown, stored, strict=True):
        assert served["state"] == trial.state.name.capitalize()
        if trial.values is not None:
            assert served["values"] == pytest.approx(trial.values)
        user = attrs(served["user_attrs"])
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert float(user["accuracy"]) == pytest.approx(trial.user_attrs["accuracy"])
            assert float(user["seconds"]) == pytest.approx(trial.user_attrs["seconds"])
            assert float(user["train_seconds"]) == pytest.approx(trial.user_attrs["train_seconds"])
            assert json.loads(user["fingerprint"]) == trial.user_attrs["fingerprint"]
            assert json.loads(user["config"]) == trial.user_attrs["config"]
        served_params = {p["name"]: p["param_external_value"] for p in served["params"]}
        assert served_params == {name: str(value) for name, value in trial.params.items()}


# -- a study written by the project's Objective on tiny synthetic data --------------------------


def test_dashboard_serves_a_study_the_objective_wrote(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = load_spec(SMOKE_SPEC)
    note = study_note(spec, baseline_seconds=1.234, device="test cpu")
    study, created = create_or_load(spec, open_storage(url, heartbeat=False), sampler_seed=0, note=note)
    assert created
    # Scripted runs (smoke's bar is 90 %): the recipe takes 1 s here; then a feasible 0.5 s trial,
    # an infeasible trial that ran faster, and a feasible one slower than the recipe.
    runs = iter([(0.92, 1.0), (0.95, 0.5), (0.85, 0.2), (0.95, 1.2)])

    def train(config: TrainConfig, time_limit: float) -> RunResult:
        accuracy, seconds = next(runs)
        return RunResult(seed=config.seed, accuracy=accuracy, holdout_accuracy=accuracy, seconds=seconds,
                         train_seconds=seconds, steps=1, diverged=False, over_time=False,
                         fingerprint={"device": "test cpu"})

    objective = Objective(spec.space, spec.base, spec.objective, train, set_constraints=set_constraints)
    objective.measure_baseline()
    study.optimize(objective, n_trials=3)
    stored = study.get_trials()

    with dashboard(url, tmp_path / "dashboard.log") as base:
        status, page = get(base, "/")
        assert status == 200 and "<html" in page.lower()
        sid = study_id(base, spec.name)
        assert sid is not None
        summaries = get(base, "/api/studies")[1]["study_summaries"]
        summary = next(s for s in summaries if s["study_id"] == sid)
        assert summary["directions"] == ["minimize"]
        assert float(attrs(summary["user_attrs"])["accuracy_target"]) == spec.objective.accuracy_target

        status, detail = get(base, f"/api/studies/{sid}?after=0")
        assert status == 200, detail
        assert detail["name"] == spec.name
        assert len(detail["trials"]) == 3
        assert_trials_match_storage(detail["trials"], stored)
        baseline = attrs(detail["trials"][0]["user_attrs"])
        assert baseline["baseline"] == "True"  # create_or_load enqueued the seed recipe first
        assert {"accuracy", "seconds", "fingerprint", "config"} <= \
            {a["key"] for a in detail["union_user_attrs"]}

        # what a person browsing sees: the objective's name, the study's note, and feasibility
        assert detail["objective_names"] == [METRIC_NAME]
        assert detail["note"]["body"] == note and "Crown guard" in note and "1.234 s" in note
        for served, trial in zip(detail["trials"], stored, strict=True):
            named = [trial.constraints["accuracy_points_short"], trial.constraints["slower_than_recipe"]]
            assert served["constraints"] == pytest.approx(named)
        feasible = [t["number"] for t in detail["trials"] if all(c <= 0 for c in t["constraints"])]
        assert feasible == [0]  # trial 1 missed the bar, trial 2 was slower than the recipe
        assert [t["number"] for t in detail["best_trials"]] == [0]  # not trial 1, which ran faster

        status, tail = get(base, f"/api/studies/{sid}?after=2")  # only trials from number 2 on
        assert status == 200 and [t["number"] for t in tail["trials"]] == [2]
        assert get(base, "/api/studies/999")[0] == 404
    log = (tmp_path / "dashboard.log").read_text()
    assert "Traceback" not in log


# -- real workers writing while the dashboard polls ---------------------------------------------


WORKERS, PER_WORKER = 4, 2


@pytest.mark.slow
def test_dashboard_polls_while_four_real_workers_write_the_default_sqlite(
        spawn_worker: Spawn, tmp_path: Path) -> None:
    """Four workers on the embedded default (./optuna.db: no --storage, no $OPTUNA_STORAGE) while
    the dashboard polls the same file: no "database is locked" anywhere, every trial recorded."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = load_spec(SMOKE_SPEC)
    # The dashboard opens the storage without creating tables (and exits on a database that has
    # none), so the schema exists first, as it does once any worker has started.
    open_storage(url, heartbeat=False).remove_session()

    with dashboard(url, tmp_path / "dashboard.log") as base:
        workers = [spawn_worker("--spec", str(spec_file(tmp_path, **QUICK)), "--n-trials", str(PER_WORKER),
                                *FAST, cwd=tmp_path)
                   for _ in range(WORKERS)]
        polls, seen_during_run = 0, 0
        deadline = time.monotonic() + 300
        while any(w.process.poll() is None for w in workers):
            assert time.monotonic() < deadline, "workers did not finish within 300 s"
            sid = study_id(base, spec.name)  # asserts HTTP 200
            polls += 1
            if sid is not None:
                status, detail = get(base, f"/api/studies/{sid}?after=0")
                assert status == 200, detail
                seen_during_run += 1
            time.sleep(0.25)
        for worker in workers:
            result = worker.finish(timeout=30)
            assert result.returncode == 0 and "sqlite:///optuna.db" in result.stdout, worker.output()
            assert "database is locked" not in worker.output(), worker.output()
        assert polls >= 4 and seen_during_run >= 1, (polls, seen_during_run)

        study = optuna.load_study(study_name=spec.name, storage=url)
        accounting = account(study)
        stored = study.get_trials()
        assert (accounting.complete, accounting.pruned, accounting.failed) == (WORKERS * PER_WORKER, 0, 0), \
            [(t.state.name, t.user_attrs.get("fail_reason") or t.user_attrs.get("reason")) for t in stored]
        assert sum(bool(t.user_attrs.get("baseline")) for t in stored) == 1
        print(f"\nSQLite: {WORKERS} workers on the default ./optuna.db, dashboard polled {polls} times; "
              f"{accounting.line()}; 'database is locked': 0")

        # The dashboard caches trials for ~2 s: wait (bounded) until it shows the final state.
        sid = study_id(base, spec.name)
        assert sid is not None
        deadline = time.monotonic() + 30
        while True:
            status, detail = get(base, f"/api/studies/{sid}?after=0")
            assert status == 200, detail
            if [t["state"] for t in detail["trials"]] == ["Complete"] * len(stored):
                break
            assert time.monotonic() < deadline, detail["trials"]
            time.sleep(0.5)
        assert_trials_match_storage(detail["trials"], stored)
        for served in detail["trials"]:
            user = attrs(served["user_attrs"])
            assert 0.0 < float(user["accuracy"]) <= 1.0 and float(user["seconds"]) > 0
            fingerprint = json.loads(user["fingerprint"])
            assert fingerprint["device_type"] == "cpu" and fingerprint["threads"] == 1

        # Export reads the same file the dashboard still holds open.
        out = tmp_path / "best.json"
        assert export.main(["--storage", url, "--study", spec.name, "--out", str(out)]) == 0
        document = json.loads(out.read_text())
        feasible = [t for t in stored if all(v <= 0 for v in t.constraints.values())]
        assert document["trial"] == min(feasible, key=lambda t: t.value).number
        assert document["config"] == stored[document["trial"]].user_attrs["config"]
    log = (tmp_path / "dashboard.log").read_text()
    assert "database is locked" not in log and "Traceback" not in log, log[-3000:]
    assert " 500 " not in log, log[-3000:]
