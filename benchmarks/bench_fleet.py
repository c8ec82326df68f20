"""A fleet of simulated GPU workers on one PostgreSQL study: throughput, duty and CPU per trial.

    python benchmarks/bench_fleet.py [--workers 1,16] [--seconds 90] [--prefill 4000] [--profile h100]
        [--storage journal|rdb]

For each fleet size N: a fresh PostgreSQL database (`--storage journal`, the default: the
`postgresql+journal://` log of studies/journal.py; `rdb`: Optuna's RDBStorage); the study of
studies/mnist_fast.toml with its trial ceiling lifted, filled with --prefill finished trials
copied from a simulated search (so the sampler and the storage meet a study of that size from the
first ask); then N real
`python -m search.worker --simulate PROFILE --timeout SECONDS` processes with default flags
(prefetch on: a simulated GPU), started together. Each run sleeps its simulated seconds, so the
storage and the sampler meet the rate N such devices would give. Per worker, from its closing
line and the study: trials, searching wall seconds, simulated seconds; from the kernel:
its CPU, user + system, start-up included (getrusage of the reaped children). And the
PostgreSQL server's CPU over the same span (every server process sampled from /proc each 0.2 s,
so a backend that exits between samples loses at most its last 0.2 s).
- throughput: the sum over workers of trials / searching wall; ratio: that over N x one worker's;
- duty: a worker's simulated seconds / its searching wall (the rest is the service's);
- CPU per trial: the workers' CPU over their trials.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_duty_cycle import drop_postgres, fresh_postgres  # noqa: E402
from bench_service_cost import open_bench_storage, simulated_trials  # noqa: E402

from search import session as worker_session  # noqa: E402
from studies.spec import load_spec  # noqa: E402
from studies.storage import create_or_load  # noqa: E402

RAN = re.compile(r"this worker ran (\d+) trial\(s\) in ([\d.]+) s")
TICKS = os.sysconf("SC_CLK_TCK")


def fleet_spec(folder: Path) -> Path:
    text = (
        (ROOT / "studies" / "mnist_fast.toml").read_text().replace("n_trials = 1000", "n_trials = 100000000")
    )
    path = folder / "fleet.toml"
    path.write_text(text.replace("minutes = 14 ", "minutes = 100000 "))
    return path


def _server_ticks() -> dict[int, int]:
    """CPU ticks so far of each live PostgreSQL server process, by pid."""
    ticks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return ticks


class ServerCPU:
    """The PostgreSQL server's CPU seconds from start() to stop(), backends that exit included."""

    def __init__(self) -> None:
        self._before = _server_ticks()
        self._last: dict[int, int] = dict(self._before)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            self._last.update(_server_ticks())

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        self._last.update(_server_ticks())
        spent = sum(ticks - self._before.get(pid, 0) for pid, ticks in self._last.items())
        return spent / TICKS


def start_worker(spec_path: Path, url: str, profile: str, seconds: float, index: int,
                 **popen: Any) -> subprocess.Popen[str]:
    """One `python -m search.worker --simulate PROFILE` of a fleet, default flags, its own sampler
    seed; its output piped unless `popen` says otherwise."""
    command = [sys.executable, "-m", "search.worker", "--spec", str(spec_path), "--storage", url,
               "--simulate", profile, "--timeout", str(seconds), "--sampler-seed", str(100 + index),
               "--no-progress"]
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen(command, cwd=ROOT, text=True, **popen)


def run_fleet(workers: int, seconds: float, profile: str, spec_path: Path,
              source: list[optuna.trial.FrozenTrial], kind: str) -> dict[str, Any]:
    name, url = fresh_postgres()
    try:
        url, storage = open_bench_storage("postgres" if kind == "rdb" else kind, url)
        study, _ = create_or_load(load_spec(spec_path), storage, sampler_seed=0)
        study.add_trials(source)
        if kind == "journal":
            storage.journal.close()
        else:
            storage.remove_session()
        prefilled = len(source)
        server = ServerCPU()
        processes = [start_worker(spec_path, url, profile, seconds, index) for index in range(workers)]
        rows = []
        for process in processes:
            stdout, stderr = process.communicate()
            found = RAN.search(stdout)
            if found is None:
                raise SystemExit(f"error: a worker did not finish: {stderr.strip()[-800:]}")
            rows.append({"pid": process.pid, "trials": int(found.group(1)), "wall": float(found.group(2))})
        server_seconds = server.stop()
        cpu = _children_cpu()
        final = optuna.load_study(study_name=study.study_name, storage=storage)
        trials = final.get_trials(deepcopy=False)
        for row in rows:
            own = [t for t in trials if t.user_attrs.get("worker", {}).get("pid") == row["pid"]]
            row["simulated"] = sum(sum(t.user_attrs.get("seconds_per_seed", [])) for t in own)
        ran = sum(row["trials"] for row in rows)
        return {
            "workers": workers,
            "prefilled": prefilled,
            "trials": ran,
            "final_size": len(trials),
            "throughput": sum(row["trials"] / row["wall"] for row in rows),
            "duty_min": min(row["simulated"] / row["wall"] for row in rows),
            "duty_median": statistics.median(row["simulated"] / row["wall"] for row in rows),
            "cpu_ms_per_trial": 1000 * cpu / ran,
            "max_rss_mb": _largest_child_mb(),
            "server_ms_per_trial": 1000 * server_seconds / ran,
            "states": {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState},
        }
    finally:
        drop_postgres(name)


_seen_children_cpu = 0.0


def _children_cpu() -> float:
    """CPU seconds of the children reaped since the last call (resource's running total)."""
    import resource

    global _seen_children_cpu
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    since, _seen_children_cpu = total - _seen_children_cpu, total
    return since


def _largest_child_mb() -> float:
    """The largest resident set of any child reaped so far, in MB (the kernel's ru_maxrss, KB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,16")
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--prefill", type=int, default=4000)
    parser.add_argument("--profile", default="h100")
    parser.add_argument("--storage", choices=("journal", "rdb"), default="journal")
    args = parser.parse_args()
    worker_session.quiet_optuna()
    source = simulated_trials(args.prefill)[: args.prefill]
    _children_cpu()
    with tempfile.TemporaryDirectory() as scratch:
        spec_path = fleet_spec(Path(scratch))
        spec = load_spec(spec_path)
        print(
            f"{time.strftime('%Y-%m-%d')}, simulated {args.profile} workers, default flags, --timeout "
            f"{args.seconds:g}, [sampler] history {spec.history}, storage {args.storage}, a fresh PostgreSQL "
            f"database per fleet "
            f"prefilled with {len(source)} trials\n"
        )
        print(
            "| workers | trials | trials/s | ratio to N x one | duty (min, median) | worker CPU ms/trial "
            "| Postgres CPU ms/trial | study at the end | largest worker RSS |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        single = None
        for workers in map(int, args.workers.split(",")):
            row = run_fleet(workers, args.seconds, args.profile, spec_path, source, args.storage)
            single = single or row["throughput"] / workers
            print(
                f"| {workers} | {row['trials']} | {row['throughput']:.2f} | "
                f"{row['throughput'] / (workers * single):.2f} | "
                f"{row['duty_min']:.3f}, {row['duty_median']:.3f} | "
                f"{row['cpu_ms_per_trial']:.1f} | {row['server_ms_per_trial']:.1f} | {row['final_size']} | "
                f"{row['max_rss_mb']:.0f} MB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
