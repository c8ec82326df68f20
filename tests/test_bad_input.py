"""Bad input to every command-line tool, as real processes: `python -m search.worker`,
`objective.train`, `search.export` and `search.report`. Each case must end with exit code 2, exactly
one `error: ...` line on stderr that names the problem (and, where there is one, the fix), no
traceback, no password anywhere in the output, and nothing written: no SQLite file created, no
table in the Postgres database, the existing study unchanged.

Each case pays for an interpreter and a torch import, so the table holds one case per distinct
error path, not one per rule. The rules stay with their layer, in-process: spec validation in
tests/studies/test_spec.py, config validation in tests/objective/test_config.py, objective.train's
`main` in tests/objective/test_train_cli.py, export's choices in tests/search/test_export.py."""

from __future__ import annotations

import contextlib
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import psycopg
import pytest

from studies.storage import CONNECT_TIMEOUT
from tests.conftest import fresh_postgres
from tests.search.workers import FAST, SMOKE, Finished, WorkerProcess, offline_env, silent_server

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "hunter2-" + secrets.token_hex(4)  # a string no message could contain by chance
MISSING_DB = f"fms_missing_{secrets.token_hex(4)}"


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
    # One case per distinct way a tool can be handed bad input. The rules behind each are unit-tested
    # where they live (every spec rule in tests/studies/test_spec.py, every config rule in
    # tests/objective/test_config.py, objective.train's `main` in tests/objective/test_train_cli.py).
    # -- search.worker: the spec (checked before the storage is touched: Postgres stays empty) -------
    "worker: bad spec, Postgres storage": Case(
        WORKER, ["--storage", "{postgres}"], "unknown sampler",
        spec=smoke_with('name = "tpe"', 'name = "bogus"')),
    "worker: bad study name": Case(
        WORKER, ["--study", "no spaces please", "--storage", "{postgres}"],
        "study name 'no spaces please' is not allowed: use 1-128 letters"),
    # -- search.worker: the storage URL, refused by the parser, by Postgres, by MySQL ----------------
    "worker: storage scheme typo": Case(
        WORKER, ["--storage", f"postgress://postgres:{PASSWORD}@127.0.0.1/x"],
        "unknown database 'postgress'; use sqlite, postgresql+psycopg"),
    "worker: database that does not exist": Case(
        WORKER, ["--storage", f"{PG}/{MISSING_DB}"], f'database "{MISSING_DB}" does not exist'),
    "worker: wrong password": Case(
        WORKER, ["--storage", f"mysql+pymysql://root:{PASSWORD}@127.0.0.1:3306/test"],
        "cannot connect to mysql+pymysql://root:***@127.0.0.1:3306/test: (1045, \"Access denied",
        skip=None if mariadb_listens() else "no MariaDB on 127.0.0.1:3306"),
    # -- search.worker: options (argparse's type checks; the rest in-process below) -----------------
    "worker: --n-trials 0": Case(WORKER, ["--n-trials", "0"], "--n-trials: must be >= 1, got 0"),
    "worker: grace period not above the interval": Case(
        WORKER, ["--heartbeat-interval", "5", "--grace-period", "5"],
        "--grace-period (5 s) must be longer than --heartbeat-interval (5 s)"),
    "worker: password in a misspelt option": Case(
        WORKER, ["--storag", f"{PG}/x"],
        "unrecognized arguments: --storag postgresql+psycopg://postgres:***@127.0.0.1:5432/x"),
    # -- search.worker: device and data -------------------------------------------------------------
    "worker: unknown device": Case(WORKER, ["--device", "tpu"], "unknown device 'tpu'; use auto, cpu, cuda"),
    "worker: more threads than cores": Case(
        WORKER, ["--threads", "999"], "--threads 999 asks for more cores than this process may use"),
    "worker: unknown simulated device": Case(
        WORKER, ["--simulate", "tpu9"],
        "unknown --simulate profile 'tpu9'; choose one of a100, cpu, h100, l4"),
    "worker: fast-forward of a real device": Case(
        WORKER, ["--fast-forward"], "--fast-forward needs --simulate PROFILE"),
    "worker: missing MNIST, no network": Case(
        WORKER, ["--data-dir", "{dir}/no-mnist"], "MNIST not found in", offline=True),
    # -- objective.train: what `main` in-process cannot show ----------------------------------------
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


def dump(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return "\n".join(db.iterdump())


def postgres_tables(url: str) -> list[str]:
    with psycopg.connect(url.replace("+psycopg", "")) as db:
        rows = db.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        return [row[0] for row in rows]


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def empty_postgres() -> Iterator[str]:
    """The Postgres database the worker cases point at: no case may leave a table in it."""
    with fresh_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def silent_port() -> Iterator[int]:
    with silent_server() as port:
        yield port


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_and_exit_2(name: str, worker_env: dict[str, str], demo: Path,
                                                empty_postgres: str, silent_port: int,
                                                tmp_path: Path) -> None:
    case = CASES[name]
    if case.skip is not None:
        pytest.skip(case.skip)
    before, folder = dump(demo), tmp_path / "case"
    values = {"sqlite": "sqlite:///{dir}/study.db", "postgres": empty_postgres, "demo": f"sqlite:///{demo}",
              "port": str(silent_port)}
    result = run(case, folder, values, worker_env)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert case.message.format(dir=folder, **values) in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout
    assert result.stdout == ""  # nothing was started, so nothing was logged
    # Nothing written: no SQLite database made on the way, no output document, the existing study as
    # it was, no table in Postgres.
    made = {path.name for path in folder.rglob("*") if path.suffix in (".db", ".json", ".html")}
    assert made <= set(case.files), made
    assert dump(demo) == before
    assert postgres_tables(empty_postgres) == []


def test_every_tool_is_covered() -> None:
    assert {case.cli for case in CASES.values()} == {WORKER, TRAIN, EXPORT, REPORT}


@pytest.mark.parametrize(("args", "message"), [
    (["--timeout", "0"], "--timeout: must be > 0 seconds"),
    (["--threads", "0"], "--threads: must be >= 1, got 0"),
    (["--db-patience", "0"], "--db-patience: must be > 0 seconds"),
])
def test_worker_option_values_are_checked_by_the_parser(args: list[str], message: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The other options with a type check, in-process: the same `error:` path as --n-trials above."""
    from search.worker import parser

    with pytest.raises(SystemExit) as exited:
        parser().parse_args(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_an_unreachable_host_is_one_error_line_within_the_connect_timeout(
        worker_env: dict[str, str]) -> None:
    """Apart from the table above: how often and how long it waits is the point."""
    connections: list[socket.socket] = []
    with silent_server(connections) as port:
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
    # One connect timeout, not one per retry: a host that never answers is asked once, and waited
    # for the whole timeout.
    assert len(connections) == 1 and seconds >= CONNECT_TIMEOUT, (len(connections), seconds)


def test_a_wrong_spec_path_is_answered_before_optuna_loads() -> None:
    """The worker's most common typo costs an interpreter, not Optuna's import (issue: under 0.5 s)."""
    code = ("import sys\nfrom search.worker import main\n"
            "assert main(['--spec', 'no/such/spec.toml']) == 2\n"
            "loaded = sorted(m for m in ('optuna', 'sqlalchemy', 'torch') if m in sys.modules)\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "error: cannot read spec no/such/spec.toml: No such file or directory\n"
