"""Bad input to every command-line tool, as real processes: `python -m search.worker`,
`objective.train`, `search.export` and `search.report`. Each case must end with exit code 2, exactly
one `error: ...` line on stderr that names the problem (and, where there is one, the fix), no
traceback, no password anywhere in the output, and nothing written: no SQLite file created, no
table in the Postgres database, the existing study unchanged.

All cases run at once (a module fixture, a few at a time), because each pays for an interpreter and
a torch import. Finer cases of one layer stay with that layer, in-process: spec validation in
tests/studies/test_spec.py, objective.train's `main` in tests/objective/test_train_cli.py, export's
choices in tests/search/test_export.py."""

from __future__ import annotations

import contextlib
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import psycopg
import pytest
import torch

from studies.storage import CONNECT_TIMEOUT
from tests.search.workers import FAST, SMOKE, Finished, WorkerProcess, offline_env, silent_server

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "hunter2-" + secrets.token_hex(4)  # a string no message could contain by chance
MISSING_DB = f"fms_missing_{secrets.token_hex(4)}"
NO_GPU = not torch.cuda.is_available()


def mariadb_listens() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 3306), timeout=1):
        return True
    return False


def smoke_with(old: str, new: str) -> str:
    text = SMOKE.read_text()
    assert old in text
    return text.replace(old, new)


@dataclass(frozen=True)
class Case:
    cli: str  # the module run with `python -m`
    args: list[str]  # {dir}: the case's own folder; {sqlite}: a database file there; {postgres},
    #                  {demo}: the module's Postgres database and existing SQLite study; {port}: a
    #                  loopback port that accepts and never answers
    message: str  # what the error line must say
    spec: str | None = None  # search.worker: the text of the spec, written to a file and passed
    files: dict[str, str] = field(default_factory=dict)  # more files in the case's folder
    offline: bool = False  # no MNIST, no network
    skip: str | None = None  # why this case cannot run on this machine


WORKER, TRAIN, EXPORT, REPORT = "search.worker", "objective.train", "search.export", "search.report"
PG = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432"  # trust auth ignores the password

DEMO = ["--storage", "{demo}", "--study", "demo"]  # the existing study, for export and report

CASES: dict[str, Case] = {
    # -- search.worker: the spec ------------------------------------------------------------------
    "worker: malformed TOML": Case(WORKER, [], "is not valid TOML", spec="[study\nname = 'smoke'\n"),
    "worker: unknown parameter": Case(
        WORKER, [], "unknown parameter 'dropout'; searchable: ",
        spec=smoke_with("[params.lr]", '[params.dropout]\ntype = "float"\nlow = 0.0\nhigh = 0.5\n\n'
                        "[params.lr]")),
    "worker: wrong type": Case(
        WORKER, [], "[params.lr] low must be a number, got 'a'", spec=smoke_with("low = 0.003", 'low = "a"')),
    "worker: low above high": Case(
        WORKER, [], "low (0.03) is greater than high (0.003)",
        spec=smoke_with("low = 0.003\nhigh = 0.03", "low = 0.03\nhigh = 0.003")),
    "worker: empty choices": Case(
        WORKER, [], "[params.batch_size] choices must be a non-empty list",
        spec=smoke_with("choices = [128, 256]", "choices = []")),
    "worker: kernel that cannot fit 28x28": Case(
        WORKER, [], "value 27 cannot be trained: conv1_kernel=27 and conv2_kernel=3 do not fit a 28x28 image",
        spec=smoke_with("[params.lr]", '[params.conv1_kernel]\ntype = "int"\nlow = 3\nhigh = 27\n\n'
                        "[params.lr]")),
    "worker: width that cannot build": Case(
        WORKER, [], "value 0 cannot be trained: conv1_width must be > 0",
        spec=smoke_with("low = 8\nhigh = 24", "low = 0\nhigh = 24")),
    "worker: unknown sampler": Case(
        WORKER, [], "unknown sampler 'tpee'; choose one of tpe, ",
        spec=smoke_with('name = "tpe"', 'name = "tpee"')),
    "worker: start point outside its range": Case(
        WORKER, [], "[[start]] #1 lr=0.5 is outside [params.lr]",
        spec=smoke_with("[params.lr]", "[[start]]\nlr = 0.5\n\n[params.lr]")),
    "worker: missing spec": Case(WORKER, ["--spec", "{dir}/no_such_spec.toml"], "cannot read spec"),
    "worker: bad spec, Postgres storage": Case(
        WORKER, ["--storage", "{postgres}"], "unknown sampler",
        spec=smoke_with('name = "tpe"', 'name = "bogus"')),
    # -- search.worker: the storage ---------------------------------------------------------------
    "worker: storage scheme typo": Case(
        WORKER, ["--storage", f"postgress://postgres:{PASSWORD}@127.0.0.1/x"],
        "unknown database 'postgress'; use sqlite, postgresql+psycopg"),
    "worker: database that does not exist": Case(
        WORKER, ["--storage", f"{PG}/{MISSING_DB}"], f'database "{MISSING_DB}" does not exist'),
    "worker: unknown user": Case(
        WORKER, ["--storage", f"postgresql+psycopg://fms_nobody:{PASSWORD}@127.0.0.1:5432/postgres"],
        'role "fms_nobody" does not exist'),
    "worker: wrong password": Case(
        WORKER, ["--storage", f"mysql+pymysql://root:{PASSWORD}@127.0.0.1:3306/test"],
        "cannot connect to mysql+pymysql://root:***@127.0.0.1:3306/test: (1045, \"Access denied",
        skip=None if mariadb_listens() else "no MariaDB on 127.0.0.1:3306"),
    "worker: bad study name": Case(
        WORKER, ["--study", "no spaces please", "--storage", "{postgres}"],
        "study name 'no spaces please' is not allowed: use 1-128 letters"),
    # -- search.worker: options -------------------------------------------------------------------
    "worker: --n-trials 0": Case(WORKER, ["--n-trials", "0"], "--n-trials: must be >= 1, got 0"),
    "worker: --n-trials -1": Case(WORKER, ["--n-trials", "-1"], "--n-trials: must be >= 1, got -1"),
    "worker: --timeout 0": Case(WORKER, ["--timeout", "0"], "--timeout: must be > 0 seconds"),
    "worker: --threads 0": Case(WORKER, ["--threads", "0"], "--threads: must be >= 1"),
    "worker: --db-patience 0": Case(WORKER, ["--db-patience", "0"], "--db-patience: must be > 0 seconds"),
    "worker: grace period not above the interval": Case(
        WORKER, ["--heartbeat-interval", "5", "--grace-period", "5"],
        "--grace-period (5 s) must be longer than --heartbeat-interval (5 s)"),
    "worker: unknown option": Case(
        WORKER, ["--n-trails", "3"], "unrecognized arguments: --n-trails 3 (see --help)"),
    "worker: password in a misspelt option": Case(
        WORKER, ["--storag", f"{PG}/x"],
        "unrecognized arguments: --storag postgresql+psycopg://postgres:***@127.0.0.1:5432/x"),
    "worker: unknown device": Case(WORKER, ["--device", "tpu"], "unknown device 'tpu'; use auto, cpu, cuda"),
    "worker: cuda without a GPU": Case(
        WORKER, ["--device", "cuda"], "no usable CUDA GPU; use --device cpu",
        skip=None if NO_GPU else "this machine has a GPU"),
    "worker: missing MNIST, no network": Case(
        WORKER, ["--data-dir", "{dir}/no-mnist"], "MNIST not found in", offline=True),
    # -- objective.train ---------------------------------------------------------------------------
    "train: unknown keys in the config file": Case(
        TRAIN, ["--config", "{dir}/best.json"],
        "unknown config key(s) dropout, learning_rate; known keys: lr",
        files={"best.json": '{"learning_rate": 0.1, "dropout": 0.5}'}, offline=True),
    "train: invalid JSON config": Case(
        TRAIN, ["--config", "{dir}/bad.json"], "bad.json is not valid JSON",
        files={"bad.json": '{"lr": 0.01,,}'}, offline=True),
    "train: cuda without a GPU": Case(
        TRAIN, ["--device", "cuda"], "no usable CUDA GPU", offline=True,
        skip=None if NO_GPU else "this machine has a GPU"),
    "train: unknown option": Case(
        TRAIN, ["--bogus"], "unrecognized arguments: --bogus (see --help)", offline=True),
    "train: missing MNIST, no network": Case(TRAIN, ["--device", "cpu"], "MNIST not found in", offline=True),
    # -- search.export -----------------------------------------------------------------------------
    "export: study that does not exist": Case(
        EXPORT, ["--storage", "{demo}", "--study", "nope", "--out", "{dir}/b.json"],
        "no study 'nope' in {demo}; studies there: demo"),
    "export: file that cannot be written": Case(
        EXPORT, [*DEMO, "--out", "{dir}/no/such/dir/best.json"],
        "directory {dir}/no/such/dir does not exist"),
    "export: unreachable host": Case(
        EXPORT, ["--storage", f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{{port}}/x",
                 "--study", "demo", "--out", "{dir}/b.json"],
        "cannot connect to postgresql+psycopg://postgres:***@127.0.0.1:"),
    "export: bad study name": Case(
        EXPORT, ["--storage", "{demo}", "--study", "../etc", "--out", "{dir}/b.json"],
        "study name '../etc' is not allowed"),
    # -- search.report -----------------------------------------------------------------------------
    "report: study that does not exist": Case(
        REPORT, ["--storage", "{demo}", "--study", "nope", "--out", "{dir}/r.html"],
        "no study 'nope' in {demo}; studies there: demo"),
    "report: missing SQLite file": Case(
        REPORT, ["--storage", "{sqlite}", "--study", "demo", "--out", "{dir}/r.html"],
        "no SQLite database at {dir}/study.db"),
    "report: file that cannot be written": Case(
        REPORT, [*DEMO, "--out", "{dir}/no/r.html"], "directory {dir}/no does not exist"),
    "report: bad study name": Case(
        REPORT, ["--storage", "{demo}", "--study", "a b", "--out", "{dir}/r.html"],
        "study name 'a b' is not allowed"),
    "report: unknown option": Case(REPORT, ["--studdy", "demo"], "(see --help)"),
}


@dataclass(frozen=True)
class Outcome:
    result: Finished
    folder: Path
    message: str  # the case's message with its placeholders filled in


def dump(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return "\n".join(db.iterdump())


def postgres_tables(url: str) -> list[str]:
    with psycopg.connect(url.replace("+psycopg", "")) as db:
        rows = db.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        return [row[0] for row in rows]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An existing study (one COMPLETE trial) that export and report cases read and must not change."""
    path = tmp_path_factory.mktemp("demo") / "demo.db"
    study = optuna.create_study(study_name="demo", storage=f"sqlite:///{path}")
    study.optimize(lambda trial: trial.suggest_float("lr", 0.001, 0.1), n_trials=1)
    study._storage.remove_session()
    return path


def command(case: Case, folder: Path, values: dict[str, str]) -> list[str]:
    values = {key: value.format(dir=folder) for key, value in values.items()}
    args = [arg.format(dir=folder, **values) for arg in case.args]
    if case.cli == WORKER:
        if case.spec is not None:
            (folder / "spec.toml").write_text(case.spec)
            args = ["--spec", str(folder / "spec.toml"), *args]
        elif "--spec" not in args:
            args = ["--spec", str(SMOKE), *args]
        if "--storage" not in args:
            args += ["--storage", values["sqlite"]]
        args = [*FAST, *args]
    return [sys.executable, "-m", case.cli, *args]


def run(case: Case, folder: Path, values: dict[str, str], env: dict[str, str]) -> Finished:
    folder.mkdir()
    for name, text in case.files.items():
        (folder / name).write_text(text)
    process = subprocess.run(command(case, folder, values), cwd=ROOT, capture_output=True, text=True,
                             timeout=240, env=offline_env(env, folder) if case.offline else env)
    return Finished(process.returncode, process.stdout, process.stderr)


@pytest.fixture(scope="module")
def outcomes(worker_env: dict[str, str], module_postgres_url: str, demo: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    root = tmp_path_factory.mktemp("bad_input")
    before = dump(demo)
    runnable = {name: case for name, case in CASES.items() if case.skip is None}
    folders = {name: root / f"case{index}" for index, name in enumerate(runnable)}
    with silent_server() as port, ThreadPoolExecutor(max_workers=6) as pool:
        values = {"sqlite": "sqlite:///{dir}/study.db", "postgres": module_postgres_url,
                  "demo": f"sqlite:///{demo}", "port": str(port)}
        futures = {name: pool.submit(run, case, folders[name], values, worker_env)
                   for name, case in runnable.items()}
        results = {name: future.result() for name, future in futures.items()}
    yield {name: Outcome(result, folders[name], CASES[name].message.format(dir=folders[name], **values))
           for name, result in results.items()}
    # Nothing written by any case: the existing study is as it was, Postgres holds no table.
    assert dump(demo) == before
    assert postgres_tables(module_postgres_url) == []


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_and_exit_2(outcomes: dict[str, Outcome], name: str) -> None:
    if CASES[name].skip is not None:
        pytest.skip(CASES[name].skip)
    outcome = outcomes[name]
    result = outcome.result
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert outcome.message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout
    assert result.stdout == ""  # nothing was started, so nothing was logged
    # No SQLite database made on the way, and no output document.
    made = {path.name for path in outcome.folder.rglob("*") if path.suffix in (".db", ".json", ".html")}
    assert made <= set(CASES[name].files), made


def test_at_least_twenty_cases_over_four_tools() -> None:
    assert len(CASES) >= 20
    assert {case.cli for case in CASES.values()} == {WORKER, TRAIN, EXPORT, REPORT}


def test_an_unreachable_host_is_one_error_line_within_the_connect_timeout(
        worker_env: dict[str, str]) -> None:
    """Its own process, not one of the batch above: its elapsed time is the point, and it must not
    include waiting for a CPU behind a dozen other torch imports."""
    with silent_server() as port:
        url = f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{port}/test"
        start = time.monotonic()
        result = WorkerProcess([*FAST, "--spec", str(SMOKE), "--storage", url], env=worker_env).finish(
            timeout=6 * CONNECT_TIMEOUT)
        seconds = time.monotonic() - start
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to "), result.stderr
    assert "timeout" in lines[0] and "postgres:***@127.0.0.1" in lines[0]
    assert PASSWORD not in result.stderr + result.stdout and "Traceback" not in result.stderr
    # One connect timeout, not one per retry: a host that never answers is not asked three times.
    assert CONNECT_TIMEOUT <= seconds < 2 * CONNECT_TIMEOUT + 5, seconds
