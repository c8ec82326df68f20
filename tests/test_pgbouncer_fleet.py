"""More simulated workers than a small PostgreSQL has connection slots for, through PgBouncer in
transaction pooling: benchmarks/bench_pgbouncer.py end to end, shrunk to a few seconds. A private
cluster with max_connections = 12 leaves 9 slots to a role that is not a superuser; 8 workers need
16 connections (2 each: docs/cluster.md), PgBouncer serves them from 4."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import postgres_cluster

ROOT = Path(__file__).resolve().parents[1]
WORKERS, MAX_CONNECTIONS, POOL = 8, 12, 4
RESERVED = 3  # PostgreSQL's superuser_reserved_connections


def test_a_fleet_past_max_connections_runs_through_pgbouncer(tmp_path: Path) -> None:
    # Debian puts it in /usr/sbin, which a user's PATH may lack (benchmarks/bench_pgbouncer.py looks there)
    if not (shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")):
        pytest.skip("needs PgBouncer's binary: apt-get install -y pgbouncer (Debian 12: 1.18)")
    if (why := postgres_cluster.missing()) is not None:
        pytest.skip(why)
    out = tmp_path / "fleet.json"
    run = subprocess.run(
        [sys.executable, "benchmarks/bench_pgbouncer.py", "--workers", str(WORKERS), "--seconds", "8",
         "--max-connections", str(MAX_CONNECTIONS), "--pool-size", str(POOL), "--modes", "pgbouncer",
         "--one-worker", "0", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (fleet,) = json.loads(out.read_text())["fleets"]
    print(run.stdout)  # the benchmark's table, with -s
    assert fleet["exit_codes"] == {"0": WORKERS} and fleet["killed"] == 0
    assert fleet["workers_with_trials"] == WORKERS
    # No connection refused or retried anywhere: not by PgBouncer, not by the server, not in a worker
    assert fleet["connection_trouble_lines"] == 0, fleet["connection_trouble_sample"]
    assert fleet["refused_by_server"] == 0 and fleet["pgbouncer_log_errors"] == []
    assert fleet["error_lines"] == {}
    # Every trial accounted for: none RUNNING, each FAILED one with its reason (a stop finds one
    # prefetched trial per worker, at most, "not run"), the workers' closing counts equal the study's.
    assert fleet["accounted"] and "RUNNING" not in fleet["states"]
    assert fleet["mismatched_workers"] == [] and fleet["trials_without_worker"] == 0
    assert set(fleet["fail_reasons"]) <= {"not run"} and fleet["states"].get("FAIL", 0) <= WORKERS
    assert fleet["states"].get("COMPLETE", 0) >= WORKERS
    # The fleet held more client connections than the server has slots for the role; the server
    # saw PgBouncer's few.
    assert fleet["pgbouncer_pools_peak"]["cl_active"] > MAX_CONNECTIONS - RESERVED
    assert fleet["server_connections_peak"] <= POOL
