"""The storage disappearing under a running worker is the worker's end, not a trial failure: exit 1
with one `error:` line that quotes the database (not Optuna's generic wrapper message)."""

from __future__ import annotations

from pathlib import Path

import psycopg

from tests.search.workers import FAST, SMOKE, Spawn

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def test_a_dropped_database_ends_the_worker_with_exit_1(spawn_worker: Spawn, postgres_url: str,
                                                        tmp_path: Path) -> None:
    spec = tmp_path / "slow.toml"  # seconds per trial, so the drop lands in the middle of one
    spec.write_text(SMOKE.read_text().replace("train_subset = 6000", "train_subset = 60000"))
    worker = spawn_worker("--spec", str(spec), "--storage", postgres_url, "--verbose", *FAST)
    worker.wait_for("trial 0 started", timeout=90)
    database = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    result = worker.finish(timeout=120)
    assert result.returncode == 1, worker.output()
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: the storage failed mid-run: "), lines[0]
    assert f'database "{database}" does not exist' in lines[0] or "terminat" in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
