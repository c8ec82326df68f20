"""Bad input to `python -m search.worker`: exit code 2, exactly one `error: ...` line on stderr that
names the problem, no traceback, the password never shown, and nothing written to the storage.

Every case is a real process. They all start together (a module fixture), because each one pays
for importing torch and the unreachable-host case waits out the connect timeout."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import torch

from studies.storage import CONNECT_TIMEOUT
from tests.search.workers import FAST, SMOKE, Finished, WorkerProcess

PASSWORD = "hunter2-" + secrets.token_hex(4)  # a string no message could contain by chance


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word: a database host that is
    'up' but never answers, which only a connect timeout can end."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join()
        for connection in [*accepted, listener]:
            connection.close()


@dataclass(frozen=True)
class Case:
    args: list[str]
    message: str  # what the error line must say
    spec_text: str | None = None  # written to a temporary spec file passed as --spec
    storage: str = "sqlite"  # where the test checks that nothing was created


def smoke_with(old: str, new: str) -> str:
    text = SMOKE.read_text()
    assert old in text
    return text.replace(old, new)


def cases() -> dict[str, Case]:
    missing_db = f"fms_missing_{secrets.token_hex(4)}"
    return {
        "malformed toml": Case([], "is not valid TOML", spec_text="[study\nname = 'smoke'\n"),
        "unknown param": Case([], "unknown parameter 'dropout'",
                              spec_text=smoke_with("[params.lr]", "[params.dropout]\ntype = \"float\"\n"
                                                   "low = 0.0\nhigh = 0.5\n\n[params.lr]")),
        "low above high": Case([], "low (0.03) is greater than high (0.003)",
                               spec_text=smoke_with("low = 0.003\nhigh = 0.03", "low = 0.03\nhigh = 0.003")),
        "unknown sampler": Case([], "unknown sampler 'tpee'",
                                spec_text=smoke_with('name = "tpe"', 'name = "tpee"')),
        "missing spec": Case(["--spec", "studies/no_such_spec.toml"], "cannot read spec"),
        "storage scheme typo": Case(["--storage", f"postgress://postgres:{PASSWORD}@127.0.0.1/test"],
                                    "unknown database 'postgress'", storage="none"),
        "missing database": Case(["--storage", f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:5432/"
                                  f"{missing_db}"], f'database "{missing_db}" does not exist',
                                 storage="none"),
        "unknown user": Case(["--storage", f"postgresql+psycopg://fms_nobody:{PASSWORD}@127.0.0.1:5432/test"],
                             'role "fms_nobody" does not exist', storage="none"),
        "n-trials 0": Case(["--n-trials", "0"], "--n-trials: must be >= 1, got 0"),
        "n-trials -1": Case(["--n-trials", "-1"], "--n-trials: must be >= 1, got -1"),
        "timeout 0": Case(["--timeout", "0"], "--timeout: must be > 0 seconds"),
        "threads 0": Case(["--threads", "0"], "--threads: must be >= 1"),
        "unknown option": Case(["--n-trails", "3"], "unrecognized arguments: --n-trails"),
        "unknown device": Case(["--device", "tpu"], "unknown device 'tpu'"),
        "cuda without a gpu": Case(["--device", "cuda"], "no usable CUDA GPU; use --device cpu"),
        "bad study name": Case(["--study", "no spaces please"],
                               "study name 'no spaces please' is not allowed", storage="postgres"),
        "bad spec, postgres storage": Case([], "unknown sampler", storage="postgres",
                                           spec_text=smoke_with('name = "tpe"', 'name = "bogus"')),
    }


@dataclass(frozen=True)
class Outcome:
    case: Case
    result: Finished
    sqlite_file: Path


@pytest.fixture(scope="module")
def outcomes(worker_env: dict[str, str], module_postgres_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    folder = tmp_path_factory.mktemp("bad_input")
    started: dict[str, tuple[Case, WorkerProcess, Path]] = {}
    for index, (name, case) in enumerate(cases().items()):
        args = list(case.args)
        if case.spec_text is not None:
            spec = folder / f"spec{index}.toml"
            spec.write_text(case.spec_text)
            args = ["--spec", str(spec), *args]
        elif "--spec" not in args:
            args = ["--spec", str(SMOKE), *args]
        sqlite_file = folder / f"study{index}.db"
        if "--storage" not in args:
            url = module_postgres_url if case.storage == "postgres" else f"sqlite:///{sqlite_file}"
            args += ["--storage", url]
        started[name] = (case, WorkerProcess([*FAST, *args], env=worker_env), sqlite_file)
    return {name: Outcome(case, worker.finish(timeout=120), sqlite_file)
            for name, (case, worker, sqlite_file) in started.items()}


def postgres_tables(url: str) -> list[str]:
    with psycopg.connect(url.replace("+psycopg", "")) as db:
        rows = db.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        return [row[0] for row in rows]


@pytest.mark.parametrize("name", list(cases()))
def test_bad_input_is_one_error_line_and_exit_2(outcomes: dict[str, Outcome], name: str,
                                                module_postgres_url: str) -> None:
    outcome = outcomes[name]
    result = outcome.result
    if name == "cuda without a gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert outcome.case.message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout
    assert result.stdout == ""  # nothing was started, so nothing was logged
    # Nothing written: no SQLite file, no Optuna tables in the Postgres database.
    assert not outcome.sqlite_file.exists()
    assert postgres_tables(module_postgres_url) == []


def test_an_unreachable_host_is_one_error_line_within_the_connect_timeout(
        worker_env: dict[str, str], tmp_path: Path) -> None:
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


def test_password_is_masked_where_the_url_is_shown(outcomes: dict[str, Outcome]) -> None:
    line = outcomes["missing database"].result.stderr
    assert "postgres:***@127.0.0.1" in line and PASSWORD not in line

