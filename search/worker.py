"""`python -m search.worker`: one search worker. Start one per GPU, on any number of hosts; the
workers cooperate through the study's storage, and each runs trials until one of its stops.

A GPU worker holds its GPU exclusively (a lock file per GPU on the host; --share-device to opt
in to sharing); with --device auto it takes the first GPU no worker holds, or waits for one. A CPU
worker leases the host's cores the same way (all of them, or --threads of them) and pins itself to
them; a worker that finds too few free waits. search/device_lock.py says how.

Stops (the running trial always finishes first): --n-trials trials run by this worker, --timeout
seconds of searching, the study's budget ([study] n_trials finished trials, all workers together,
or [study] minutes since it was created) reached, or a SIGINT/SIGTERM. A second signal aborts the
running trial (recorded as FAILED). search/loop.py shows a trial's whole life.

--prefetch (on by default for a GPU worker, off for a CPU one: search/prefetch.py) asks the next
trial while this one trains; a stop by signal or --timeout then finds it asked: it is told FAILED,
"not run".

A database that goes away mid-run (a restart, a network blip) is waited for: each storage call is
retried with backoff (1, 2, 4, 8, then 16 s), with one log line per wait, for up to --db-patience
seconds (default 120). Past that the worker exits 1; the trial it was running stays RUNNING until
its heartbeat is --grace-period seconds old, then the next worker to look (a running one, or the
next one started) marks it FAILED and queues a retry of its parameters.

--simulate PROFILE (h100, a100, l4, cpu) trains nothing: each run sleeps the seconds a model of
that device gives and reports the accuracy a model fitted to real runs gives (objective/sim/);
no torch, no MNIST, no device held, and trials fingerprinted "simulated PROFILE", never mixed
with real ones. --fast-forward does not sleep: a virtual clock counts the simulated seconds (the
study's minutes too), and --workers N runs N simulated workers on it in this one process, in the
order their runs would end (search/clock.py, search/fleet.py).

Exit codes: 0 stopped as planned; 1 the storage failed mid-run (or stayed away past --db-patience),
or trials keep failing; 2 bad input (one `error: ...` line on stderr, nothing written to the
storage); 130/143 aborted by a second SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

from objective.cli import OneLineParser
from objective.errors import UserError
from objective.sim.device import profile_names
from search.signals import GracefulStop
from studies.liveness import DEFAULT_PATIENCE, GRACE_PERIOD, HEARTBEAT_INTERVAL
from studies.spec_file import DEFAULT_SPEC, default_spec, read_spec_file


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _at_least_one(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _seed(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m search.worker", description=__doc__, allow_abbrev=False,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", metavar="PATH", help=f"study spec (TOML); default {DEFAULT_SPEC}")
    p.add_argument("--study", metavar="NAME", help="study name (default: the spec's [study] name)")
    p.add_argument("--storage", metavar="URL", help="storage URL (default: $OPTUNA_STORAGE, else sqlite:///optuna.db)")
    p.add_argument("--n-trials", metavar="N", type=_at_least_one,
                   help="trials this worker runs at most (default: until the study's budget is reached)")
    p.add_argument("--timeout", metavar="SECONDS", type=_positive_seconds,
                   help="start no trial after this many seconds of searching")
    p.add_argument("--device", metavar="DEVICE", default="auto",
                   help="auto, cpu, cuda or cuda:N (default: auto: the first GPU no worker holds, "
                        "waiting while all are held; the CPU on a host without one)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="MNIST root holding MNIST/raw (default: $MNIST_DATA, else ~/.cache/fast-mnist)")
    p.add_argument("--threads", metavar="N", type=_at_least_one,
                   help="CPU threads for torch; on the CPU, the cores leased (default: every core this "
                        "process may use, so CPU workers without it run one at a time)")
    p.add_argument("--share-device", action="store_true",
                   help="share the GPU, or the CPU cores, with other --share-device workers (their "
                        "timings disturb each other)")
    p.add_argument("--wait-device", action="store_true",
                   help="wait for a busy GPU named by --device instead of exiting")
    p.add_argument("--sampler-seed", metavar="SEED", type=_seed,
                   help="sampler seed (default: the spec's [sampler] seed mixed with the host name and "
                        "this process's pid, so workers started together, in containers too, do not "
                        "all sample the same points)")
    p.add_argument("--db-patience", metavar="SECONDS", type=_positive_seconds, default=DEFAULT_PATIENCE,
                   help="how long to keep retrying a database that went away before exiting 1 "
                        f"(default {DEFAULT_PATIENCE:g})")
    p.add_argument("--heartbeat-interval", metavar="SECONDS", type=_at_least_one, default=HEARTBEAT_INTERVAL,
                   help=f"seconds between a running trial's heartbeats (default {HEARTBEAT_INTERVAL})")
    p.add_argument("--grace-period", metavar="SECONDS", type=_at_least_one, default=GRACE_PERIOD,
                   help="seconds without a heartbeat after which a trial counts as its worker's death, "
                        f"turns FAILED and is retried; give every worker of a study the same (default "
                        f"{GRACE_PERIOD})")
    p.add_argument("--prefetch", action=argparse.BooleanOptionalAction,
                   help="ask and suggest the next trial, and tell the last one, on a background thread "
                        "while this one trains (default: on for a GPU, off for the CPU, whose timed run "
                        "the thread would slow); a stop then finds one trial asked, which turns FAILED "
                        "as not run")
    p.add_argument("--simulate", metavar="PROFILE",
                   help=f"train nothing: a simulated device ({', '.join(profile_names())}); see above")
    p.add_argument("--fast-forward", action="store_true",
                   help="with --simulate: no sleeping, a virtual clock counts the simulated seconds")
    p.add_argument("--workers", metavar="N", type=_at_least_one, default=1,
                   help="with --fast-forward: N simulated workers in this process (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument("--verbose", action="store_true",
                   help="also log trial starts and the traceback of every failed trial")
    return p


def main(argv: list[str] | None = None) -> int:
    graceful_stop = GracefulStop()
    graceful_stop.install()
    args = parser().parse_args(argv)
    args.spec = args.spec or default_spec()
    try:
        read_spec_file(args.spec)  # a wrong path or broken TOML is answered before Optuna loads
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from search.session import run  # Optuna, SQLAlchemy and the database drivers load here

    return run(args, graceful_stop)


if __name__ == "__main__":
    sys.exit(main())
