"""A fleet past a stock PostgreSQL's max_connections: through PgBouncer, and straight to the server.

    python benchmarks/bench_pgbouncer.py [--workers 64] [--seconds 90] [--max-connections 100]
        [--storage journal|rdb] [--modes pgbouncer,direct] [--pool-size 80] [--one-worker 30]
        [--json PATH]

First (--one-worker SECONDS, 0 skips it), the connections one worker holds: one simulated worker
with default flags (prefetch and heartbeats on) on each storage, straight to a private cluster; the
server's client backends sampled every 20 ms, and the connections it opened counted from the
server's log (log_connections), so that a short-lived extra connection is seen even between samples.

Then, per mode, a private PostgreSQL cluster (tests/postgres_cluster.py) with max_connections set,
and a role `optuna` that is not a superuser (so, as for any application role, the last
superuser_reserved_connections slots are not its own) owning a fresh database. `pgbouncer`: a
private PgBouncer (Debian's package) in front of it, pool_mode = transaction, at most --pool-size
server connections, the workers' URL with `?prepare_threshold=none` (studies/storage.py says why).
`direct`: the workers straight to the server. `pgbouncer-prepared`: through PgBouncer without that
option, to show what it prevents. The study of studies/mnist_fast.toml, its trial ceiling
and minutes lifted, is created, then --workers real `python -m search.worker --simulate h100
--timeout SECONDS` processes start together (benchmarks/bench_fleet.py's), each with its own log.
Measured: the workers' exit codes; their log lines about connections (refused, retried, failed
heartbeats) and their `error:` lines; the server's refusals (from its log); every trial accounted for
(no RUNNING left, each FAILED with its reason, each worker's closing counts equal to its trials in
the study); throughput (the study's finished trials over the span from the first trial's start to
the last one's end; and, as bench_fleet.py, the sum over workers of trials / searching wall); the
peak of the server's client connections (its backends' titles in /proc, every 0.1 s: asking the
server would take a slot) and the least free memory; with PgBouncer its SHOW POOLS peaks and SHOW
STATS; and whether other benchmarks or test runs shared the machine meanwhile (every 5 s).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import psycopg
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_fleet import RAN, fleet_spec, start_worker  # noqa: E402
from bench_service_cost import open_bench_storage  # noqa: E402

from search import session as worker_session  # noqa: E402
from studies.spec import load_spec  # noqa: E402
from studies.storage import create_or_load, load_existing  # noqa: E402
from tests import postgres_cluster  # noqa: E402
from tests.postgres_cluster import Cluster  # noqa: E402

ROLE = "optuna"  # the workers' role: not a superuser
DATABASE = "fleet"
NOT_RUN = re.compile(r"(\d+) prefetched trial\(s\) not run")
# A worker's log lines that say a connection failed, was refused or was retried
CONNECTION_TROUBLE = re.compile(
    r"too many clients|connection slots are reserved|no more connections|connection refused|"
    r"could not connect|connection failed|database unreachable|server closed the connection|"
    r"prepared statement|heartbeat of trial id \d+ failed|stale-trial check failed", re.IGNORECASE)
# What the server answers a connection past its slots: a role that is not a superuser past
# max_connections - superuser_reserved_connections, and anyone past max_connections.
REFUSALS = ("remaining connection slots are reserved for non-replication superuser connections",
            "sorry, too many clients already")
POOL_CAP = 3  # connections one RDBStorage worker may open at most (studies/storage.py engine_kwargs)


def pgbouncer_binary() -> str | None:
    """PgBouncer's program: on PATH, or in /usr/sbin, where Debian puts it and a user's PATH may not go."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


def missing() -> str | None:
    """Why no PgBouncer fleet can run here, or None."""
    if pgbouncer_binary() is None:
        return "needs PgBouncer's binary (Debian: apt-get install -y pgbouncer)"
    return postgres_cluster.missing()


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def admin_url(port: int, database: str = "postgres") -> str:
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


@contextlib.contextmanager
def server(max_connections: int) -> Iterator[Cluster]:
    """A private cluster with `max_connections` and log_connections on, holding DATABASE owned by ROLE."""
    with postgres_cluster.postgres_cluster(DATABASE) as (_, cluster):
        with psycopg.connect(admin_url(cluster.port), autocommit=True) as admin:
            admin.execute(f"ALTER SYSTEM SET max_connections = {int(max_connections)}")
            admin.execute("ALTER SYSTEM SET log_connections = on")
            admin.execute(f"CREATE ROLE {ROLE} LOGIN")
            admin.execute(f"ALTER DATABASE {DATABASE} OWNER TO {ROLE}")
        cluster.stop()  # max_connections takes a restart
        cluster.start()
        yield cluster


@contextlib.contextmanager
def pgbouncer(cluster: Cluster, pool_size: int, max_client_conn: int) -> Iterator[int]:
    """A PgBouncer in transaction pooling in front of `cluster`, trusting its clients as the cluster
    does; at most `pool_size` server connections. Yields its port; its log is pgbouncer.log."""
    port = _free_port()
    folder = cluster.folder
    (folder / "userlist.txt").write_text(f'"{ROLE}" ""\n"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(f"""[databases]
* = host={cluster.address} port={cluster.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
logfile = {folder / "pgbouncer.log"}
auth_type = trust
auth_file = {folder / "userlist.txt"}
admin_users = postgres
pool_mode = transaction
default_pool_size = {pool_size}
max_db_connections = {pool_size}
max_client_conn = {max_client_conn}
""")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # it refuses root
    # In the foreground it logs to stderr as well: into a file, since a pipe nobody reads fills up
    # and then blocks PgBouncer, and every client with it.
    with (folder / "pgbouncer.stderr").open("w") as stderr:
        process = subprocess.Popen([*as_postgres, str(pgbouncer_binary()), str(folder / "pgbouncer.ini")],
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    said = (folder / "pgbouncer.stderr").read_text()[-800:]
                    raise RuntimeError(f"PgBouncer did not start: {said}") from None
                time.sleep(0.1)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)  # its immediate shutdown; the clients are gone by now
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pgbouncer_show(port: int, what: str, database: str) -> list[dict[str, Any]]:
    """`SHOW what` on PgBouncer's admin console, the rows of `database`. The console speaks the
    simple query protocol only: a ClientCursor sends a query without parameters that way."""
    with psycopg.connect(admin_url(port, "pgbouncer"), autocommit=True, connect_timeout=5) as console:
        cursor = psycopg.ClientCursor(console)
        cursor.execute(f"SHOW {what}")
        names = [column.name for column in cursor.description or []]
        return [row for row in (dict(zip(names, values, strict=True)) for values in cursor.fetchall())
                if row.get("database") == database]


def _mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def backends(cluster: Cluster, role: str) -> int:
    """The cluster's client backends of `role` now, from /proc: the postmaster's children whose title
    is `postgres: ROLE DATABASE ...`. Asking pg_stat_activity would take a connection slot itself."""
    postmaster = (cluster.folder / "data" / "postmaster.pid").read_text().split()[0]
    # In: idle, or running a command (its tag, upper case). Not yet in: one still authenticating or
    # starting up, whom the server may yet refuse a slot.
    title, count = re.compile(rf"^postgres: {role} \S+ \S+\) (idle|[A-Z])".encode()), 0
    for child in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split():
        with contextlib.suppress(OSError):  # a backend that just exited
            count += bool(title.match(Path(f"/proc/{child}/cmdline").read_bytes()))
    return count


class Sampler:
    """The server's client connections of `role` (every `every` s) and the least free memory; with a
    PgBouncer port, its pool's peaks too (every second)."""

    def __init__(self, cluster: Cluster, role: str, every: float = 0.1, bouncer: int | None = None) -> None:
        self.cluster, self.role, self.every, self.bouncer = cluster, role, every, bouncer
        self.samples: list[int] = []
        self.least_free_mb = _mem_available_mb()
        self.pools: dict[str, int] = collections.defaultdict(int)
        self.others: list[bool] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_pools = last_others = 0.0
        while not self._done.wait(self.every):
            self.samples.append(backends(self.cluster, self.role))
            self.least_free_mb = min(self.least_free_mb, _mem_available_mb())
            if time.monotonic() - last_others >= 5:  # whether anything else heavy ran meanwhile
                last_others = time.monotonic()
                self.others.append(bool(other_heavy_processes()))
            if self.bouncer is not None and time.monotonic() - last_pools >= 1:
                last_pools = time.monotonic()
                with contextlib.suppress(psycopg.Error):
                    for row in pgbouncer_show(self.bouncer, "POOLS", DATABASE):
                        for key in ("cl_active", "cl_waiting", "sv_active", "sv_idle", "maxwait"):
                            self.pools[key] = max(self.pools[key], int(row[key]))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def connections_of_one_worker(kind: str, seconds: float, spec_path: Path, folder: Path) -> dict[str, Any]:
    """One simulated worker, default flags, straight to a private cluster: its server connections."""
    with server(100) as cluster:
        url = cluster.url(DATABASE).replace("postgres@", f"{ROLE}@")
        url, storage = open_bench_storage("journal" if kind == "journal" else "postgres", url)
        create_or_load(load_spec(spec_path), storage, sampler_seed=0)
        close(storage)
        log_start = len((cluster.folder / "log").read_text())  # the worker's connections from here on
        sampler = Sampler(cluster, ROLE, every=0.02)
        with (folder / f"one-{kind}.log").open("w") as out:
            process = start_worker(spec_path, url, "h100", seconds, 0, stdout=out, stderr=subprocess.STDOUT)
            code = process.wait()
        sampler.stop()
        log = (cluster.folder / "log").read_text()[log_start:]
    opened = opened_connections(log)
    busy = [n for n in sampler.samples if n]
    return {"storage": kind, "exit": code, "samples": len(sampler.samples), "peak": max(sampler.samples),
            "typical": statistics.mode(busy) if busy else 0, "opened": opened,
            "share": {n: round(c / len(sampler.samples), 3)
                      for n, c in sorted(collections.Counter(sampler.samples).items())}}


def opened_connections(server_log: str) -> int:
    """Connections of ROLE the server let in: those authorized, less those then refused a slot."""
    return len(re.findall(rf"connection authorized: user={ROLE} ", server_log)) - refusals(server_log)


def refusals(server_log: str) -> int:
    return sum(server_log.count(refusal) for refusal in REFUSALS)


def close(storage: Any) -> None:
    """Give back a benchmark storage's connections before the workers need the slots."""
    if hasattr(storage, "journal"):
        storage.journal.close()
    else:  # search/retry.py's RetryingStorage on an RDBStorage
        storage.remove_session()
        storage.backend.engine.dispose()


def read_worker_log(path: Path) -> dict[str, Any]:
    text = path.read_text(errors="replace")
    ran, not_run = RAN.search(text), NOT_RUN.search(text)
    joined = re.search(r"^\S+ \S+ (joined|created) study", text, re.MULTILINE)
    before = text[:joined.start()] if joined else text
    return {"ran": int(ran.group(1)) if ran else None, "wall": float(ran.group(2)) if ran else None,
            "not_run": int(not_run.group(1)) if not_run else 0,
            "errors": [line for line in text.splitlines() if line.startswith("error:")],
            "trouble": [line for line in text.splitlines() if CONNECTION_TROUBLE.search(line)],
            "refused_before_joining": any(refusal in before for refusal in REFUSALS)}


def run_fleet(mode: str, kind: str, workers: int, seconds: float, max_connections: int, pool_size: int,
              spec_path: Path, folder: Path) -> dict[str, Any]:
    """`workers` simulated workers on a fresh study, through PgBouncer (`mode` pgbouncer) or not."""
    with server(max_connections) as cluster, contextlib.ExitStack() as stack:
        bouncer = None
        url = cluster.url(DATABASE).replace("postgres@", f"{ROLE}@")
        if mode.startswith("pgbouncer"):
            bouncer = stack.enter_context(pgbouncer(cluster, pool_size, workers * POOL_CAP + 20))
            url = url.replace(f":{cluster.port}/", f":{bouncer}/")
            # pgbouncer-prepared: the URL a user who forgot the option gives, to see what breaks
            url += "?prepare_threshold=none" if mode == "pgbouncer" else ""
        url, storage = open_bench_storage("journal" if kind == "journal" else "postgres", url)
        study, _ = create_or_load(load_spec(spec_path), storage, sampler_seed=0)
        close(storage)
        log_start = len((cluster.folder / "log").read_text())  # the workers' connections from here on
        sampler = Sampler(cluster, ROLE, bouncer=bouncer)
        started = time.monotonic()
        logs = [folder / f"{mode}-{kind}-{index}.log" for index in range(workers)]
        processes = []
        for index, path in enumerate(logs):
            with path.open("w") as out:
                processes.append(start_worker(spec_path, url, "h100", seconds, index, stdout=out,
                                              stderr=subprocess.STDOUT))
        # A worker waits out --db-patience (120 s) for a refused connection before it gives up.
        deadline = started + seconds + 240 + 2 * workers
        killed = 0
        for process in processes:
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed += 1
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
                process.kill()
                process.wait()
        wall = time.monotonic() - started
        sampler.stop()
        stats = pgbouncer_show(bouncer, "STATS", DATABASE) if bouncer is not None else []
        bouncer_log = (cluster.folder / "pgbouncer.log").read_text() if bouncer is not None else ""
        server_log = (cluster.folder / "log").read_text()[log_start:]
        # Read back straight from the server, as a superuser: not one of the fleet's slots.
        direct = cluster.url(DATABASE).replace("postgresql+psycopg", "postgresql+journal") \
            if kind == "journal" else cluster.url(DATABASE)
        trials = load_existing(direct, study.study_name).get_trials(deepcopy=False)
    rows = [{"pid": process.pid, "exit": process.returncode, **read_worker_log(path)}
            for process, path in zip(processes, logs, strict=True)]
    return summarize(mode, kind, workers, rows, trials, wall, killed, sampler, stats, bouncer_log, server_log)


def summarize(mode: str, kind: str, workers: int, rows: list[dict[str, Any]],
              trials: list[optuna.trial.FrozenTrial], wall: float, killed: int, sampler: Sampler,
              stats: list[dict[str, Any]], bouncer_log: str, server_log: str) -> dict[str, Any]:
    states = collections.Counter(t.state.name for t in trials)
    by_pid = collections.Counter(t.user_attrs.get("worker", {}).get("pid") for t in trials
                                 if t.state != TrialState.WAITING)
    mismatched = [row["pid"] for row in rows
                  if by_pid.get(row["pid"], 0) != (row["ran"] or 0) + row["not_run"]]
    # The stale check fails a trial without a fail_reason, and queues its retry (search/stale.py)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    reasons = collections.Counter(str(t.user_attrs.get("fail_reason", "failed as stale (heartbeats stopped)"))
                                  .split(":")[0] for t in failed)
    unowned = by_pid.get(None, 0)
    finished = [t for t in trials if t.state.is_finished() and t.datetime_start and t.datetime_complete]
    span = ((max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished))  # type: ignore[type-var]
            .total_seconds() if finished else 0.0)
    accounted = (states.get("RUNNING", 0) == 0 and not mismatched and unowned == 0 and killed == 0)
    errors = collections.Counter(line for row in rows for line in row["errors"])
    refused = [row for row in rows if any(re.search("|".join(REFUSALS), line) for line in row["trouble"])]
    trouble = [line for row in rows for line in row["trouble"]]
    total = int(sum(stat.get("total_xact_count", 0) for stat in stats))
    return {
        "mode": mode, "storage": kind, "workers": workers, "wall": round(wall, 1),
        "exit_codes": dict(sorted(collections.Counter(row["exit"] for row in rows).items())),
        "killed": killed, "workers_with_trials": sum(1 for row in rows if row["ran"]),
        # workers refused a slot at all; of them, those whose heartbeats went unrecorded (their trials
        # could not be told from a dead worker's), and those that waited to open the study
        "workers_refused": len(refused),
        "workers_refused_a_heartbeat": sum(any("heartbeat of trial" in line for line in row["trouble"])
                                           for row in refused),
        "workers_refused_at_start": sum(row["refused_before_joining"] for row in refused),
        "states": dict(states), "fail_reasons": dict(reasons), "accounted": accounted,
        "mismatched_workers": mismatched, "trials_without_worker": unowned,
        "finished": len(finished), "span": round(span, 1),
        "throughput": len(finished) / span if span else 0.0,
        "throughput_per_worker_sum": sum(row["ran"] / row["wall"] for row in rows
                                         if row["ran"] and row["wall"]),
        "connection_trouble_lines": len(trouble), "connection_trouble_sample": sorted(set(trouble))[:5],
        "error_lines": dict(errors.most_common(5)),
        "refused_by_server": refusals(server_log),
        "server_connections_opened": opened_connections(server_log),
        "server_connections_peak": max(sampler.samples, default=0),
        "least_free_memory_mb": round(sampler.least_free_mb),
        "others_running_share": round(statistics.fmean(sampler.others), 2) if sampler.others else 0.0,
        "pgbouncer_pools_peak": dict(sampler.pools),
        "pgbouncer_stats": {key: int(stats[0][key]) for key in ("total_xact_count", "total_query_count",
                                                           "total_xact_time", "total_wait_time")}
        if stats else {},
        "pgbouncer_mean_xact_ms": (round(float(sum(s["total_xact_time"] for s in stats)) / total / 1000, 2)
                                   if total else None),
        "pgbouncer_log_errors": [line for line in bouncer_log.splitlines()
                                 if re.search(r"\bERROR\b|no more connections|pooler error", line)][:5],
    }


def other_heavy_processes() -> list[str]:
    """Benchmarks or test runs of others on this machine now (their figures and ours would mix)."""
    found = subprocess.run(["pgrep", "-af", "bench_regret|bench_search_outcome|pytest"],
                           capture_output=True, text=True).stdout.splitlines()
    return [line for line in found if "bench_pgbouncer" not in line]


def quiet_check() -> str:
    """What else runs on this machine now: heavy processes, and the load."""
    others = other_heavy_processes()
    load = os.getloadavg()[0]
    return f"load average {load:.2f}; " + (f"{len(others)} other heavy process(es): {others[0][:120]}"
                                           if others else "no other benchmark or pytest running")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=90.0, help="each worker's --timeout")
    parser.add_argument("--max-connections", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=80, help="PgBouncer's server connections at most")
    parser.add_argument("--storage", choices=("journal", "rdb"), default="journal")
    parser.add_argument("--modes", default="pgbouncer,direct", help="pgbouncer, direct, pgbouncer-prepared")
    parser.add_argument("--one-worker", type=float, default=30.0, metavar="SECONDS",
                        help="measure one worker's connections on each storage first (0: skip)")
    parser.add_argument("--json", type=Path, help="write every figure here too")
    args = parser.parse_args()
    if (why := missing()) is not None:
        raise SystemExit(f"error: {why}")
    worker_session.quiet_optuna()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": quiet_check(), "one_worker": [],
                              "fleets": []}
    print(f"{report['date']}: {report['machine']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-pgbouncer-") as scratch:
        folder = Path(scratch)
        spec_path = fleet_spec(folder)
        if args.one_worker > 0:
            print(f"\nOne simulated h100 worker, default flags, --timeout {args.one_worker:g}, straight to "
                  "the server:\n\n| storage | peak | typical | share of samples at each count | opened "
                  "| exit |\n|---|---|---|---|---|---|")
            for kind in ("journal", "rdb"):
                one = connections_of_one_worker(kind, args.one_worker, spec_path, folder)
                report["one_worker"].append(one)
                share = ", ".join(f"{n}: {100 * s:.1f} %" for n, s in one["share"].items())
                print(f"| {kind} | {one['peak']} | {one['typical']} | {share} | {one['opened']} "
                      f"| {one['exit']} |", flush=True)
        print(f"\n{args.workers} simulated h100 workers, --timeout {args.seconds:g}, storage {args.storage}, "
              f"max_connections {args.max_connections}, PgBouncer pool {args.pool_size} (transaction):\n")
        print("| mode | exit codes | trials: states | accounted | connection errors in workers' logs "
              "| refused by the server | trials/s (span) | sum of workers' trials/s "
              "| server connections peak | least free memory |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for mode in args.modes.split(","):
            row = run_fleet(mode, args.storage, args.workers, args.seconds, args.max_connections,
                            args.pool_size, spec_path, folder)
            report["fleets"].append(row)
            states = ", ".join(f"{name} {count}" for name, count in sorted(row["states"].items()))
            print(f"| {mode} | {row['exit_codes']} | {states} | {'yes' if row['accounted'] else 'NO'} | "
                  f"{row['connection_trouble_lines']} | {row['refused_by_server']} | "
                  f"{row['throughput']:.2f} ({row['finished']} in {row['span']:.0f} s) | "
                  f"{row['throughput_per_worker_sum']:.2f} | {row['server_connections_peak']} | "
                  f"{row['least_free_memory_mb']} MB |", flush=True)
        for row in report["fleets"]:
            print(f"\n{row['mode']}: wall {row['wall']} s (other benchmarks or tests ran during "
                  f"{100 * row['others_running_share']:.0f} % of it), workers with trials "
                  f"{row['workers_with_trials']}, "
                  f"failed: {row['fail_reasons']}, server connections opened "
                  f"{row['server_connections_opened']}; workers refused a connection "
                  f"{row['workers_refused']} (a heartbeat's: {row['workers_refused_a_heartbeat']}, at start: "
                  f"{row['workers_refused_at_start']})")
            for line, count in row["error_lines"].items():
                print(f"  {count} x {line}")
            for line in row["connection_trouble_sample"]:
                print(f"  e.g. {line}")
            if row["pgbouncer_stats"]:
                print(f"  PgBouncer: pools peak {row['pgbouncer_pools_peak']}, stats "
                      f"{row['pgbouncer_stats']}, mean transaction {row['pgbouncer_mean_xact_ms']} ms, "
                      f"log errors {row['pgbouncer_log_errors'] or 'none'}")
    report["machine_after"] = quiet_check()
    print(f"\nat the end: {report['machine_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
