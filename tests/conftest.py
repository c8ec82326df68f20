"""Fixtures for every test folder: fresh databases, and an environment in which real processes of the
project's CLIs find the shared MNIST and build its tensor cache once per test session."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import torch

from tests.search.workers import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "mnist"  # the shared, read-only copy next to the repository
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# pytest-xdist runs as many tests at once as there are cores (pyproject.toml: -n auto), and many of
# them start torch processes of their own: a test's torch using every core would only contend.
torch.set_num_threads(1)


@contextlib.contextmanager
def fresh_postgres() -> Iterator[str]:
    """An empty Postgres database of its own, dropped (connections and all) afterwards."""
    name = f"fms_{secrets.token_hex(6)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


@pytest.fixture(scope="session")
def worker_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for `python -m search.worker` subprocesses: the shared MNIST, a session-wide
    tensor cache (built here once, so concurrent workers do not all build it), a private lock
    folder, the repository on the path, and no $OPTUNA_STORAGE from the caller's shell."""
    if not (MNIST / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found at {MNIST}")
    env = {**os.environ, "MNIST_DATA": str(MNIST),
           "FAST_MNIST_CACHE": str(tmp_path_factory.mktemp("tensors")),
           "FAST_MNIST_LOCK_DIR": str(tmp_path_factory.mktemp("locks")),
           "PYTHONPATH": str(ROOT)}
    env.pop("OPTUNA_STORAGE", None)
    build = "from objective.data import load_uint8, resolve_root; load_uint8(resolve_root(None))"
    subprocess.run([sys.executable, "-c", build], cwd=ROOT, env=env, check=True, timeout=300)
    return env


@pytest.fixture
def spawn_worker(worker_env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `python -m search.worker ARGS` (cwd: the repository); any still running at the end of
    the test are killed, so a failing test leaves no worker behind."""
    started: list[WorkerProcess] = []

    def spawn(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(list(args), env=env or worker_env, cwd=cwd)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.kill()


# -- CI's must-run check ------------------------------------------------------------------------
# With FAST_MNIST_MUST_RUN=1 (.ci/run sets it) the session lists every skipped test with its reason,
# and fails if a test named here skipped, or, in a run of the whole suite, did not run at all (renamed
# or deselected). Each stands for something this machine and CI have, and without which it and its
# kind would skip quietly. Test function names, so a test file may move or be renamed; a renamed test
# is renamed here too.
MUST_RUN = {
    "test_a_host_cut_off_mid_trial": "root, iproute2, nftables, PostgreSQL's server binaries",  # partition
    "test_dashboard_polls_while_four_real_workers_write_the_default_sqlite": "MNIST at ../shared/mnist",
    # faults: workers killed, the database restarted, away or dropped, a trial diverging
    "test_sigkill_mid_trial_several_times": "MNIST at ../shared/mnist",
    "test_workers_ride_out_a_postgres_restart": "PostgreSQL's server binaries, MNIST",
    "test_a_database_away_past_the_patience": "PostgreSQL's server binaries, MNIST",
    "test_a_dropped_database_ends_the_worker_with_exit_1": "MNIST at ../shared/mnist",
    "test_divergence_and_out_of_memory_fail_only_their_trial": "MNIST at ../shared/mnist",
    "test_a_fleet_past_max_connections_runs_through_pgbouncer": "PgBouncer, PostgreSQL's server binaries",
    "test_published_ports_bind_loopback_only": "Docker Compose v2 (`docker compose config`)",
}
_skips: dict[str, str] = {}  # node id: reason
_reported: set[str] = set()  # test function names
_must_run_failures: list[str] = []


def _function_name(nodeid: str) -> str:
    return nodeid.rsplit("::", 1)[-1].split("[", 1)[0]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _reported.add(_function_name(report.nodeid))
    if report.skipped and not hasattr(report, "wasxfail"):  # longrepr: (file, line, "Skipped: why")
        why = report.longrepr[2] if isinstance(report.longrepr, tuple | list) else str(report.longrepr)
        _skips[report.nodeid] = why.removeprefix("Skipped: ")


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if os.environ.get("FAST_MNIST_MUST_RUN") != "1" or hasattr(config, "workerinput"):  # xdist's main only
        return
    for nodeid, why in _skips.items():
        if (name := _function_name(nodeid)) in MUST_RUN:
            _must_run_failures.append(f"{nodeid} skipped ({why}); it needs {MUST_RUN[name]}")
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS and not config.option.keyword:
        _must_run_failures.extend(f"{name} did not run" for name in sorted(MUST_RUN.keys() - _reported))
    if _must_run_failures and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if os.environ.get("FAST_MNIST_MUST_RUN") != "1":
        return
    terminalreporter.write_sep("=", f"{len(_skips)} skipped (FAST_MNIST_MUST_RUN)")
    for nodeid, why in sorted(_skips.items()):
        terminalreporter.write_line(f"SKIPPED {nodeid}: {why}")
    for failure in _must_run_failures:
        terminalreporter.write_line(f"MUST RUN: {failure}", red=True, bold=True)
