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
