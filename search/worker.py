"""`python -m search.worker`: one search worker. Start one per GPU, on any number of hosts; the
workers cooperate through the study's storage, and each runs trials until one of its stops.

A GPU worker holds its GPU exclusively (a lock file per GPU on the host; --share-device to opt
in to sharing). CPU workers take no lock: they share the cores, so give each one --threads.

Stops (the running trial always finishes first): --n-trials trials run by this worker, --timeout
seconds of searching, the study's budget ([study] n_trials finished trials, all workers together)
reached, or a SIGINT/SIGTERM. A second signal aborts the running trial (recorded as FAILED).
With --prefetch (search/pipeline.py) a stop by signal or --timeout finds the next trial already
asked: it is told FAILED, "not run".

A database that goes away mid-run (a restart, a network blip) is waited for: each storage call is
retried with backoff (1, 2, 4, 8, then 16 s), with one log line per wait, for up to --db-patience
seconds (default 120). Past that the worker exits 1; the trial it was running stays RUNNING until
its heartbeat is --grace-period seconds old, then the next worker to look (a running one, or the
next one started) marks it FAILED and queues a retry of its parameters.

Exit codes: 0 stopped as planned; 1 the storage failed mid-run (or stayed away past --db-patience),
or trials keep failing; 2 bad input (one `error: ...` line on stderr, nothing written to the
storage); 130/143 aborted by a second SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

from objective.cli import OneLineParser, hide_passwords
from objective.config import TrainConfig
from objective.data import Mnist, load_resident, resolve_root
from objective.errors import UserError
from objective.objective import Objective
from objective.trainer import RunResult, fingerprint, resolve_device, train_once
from search.device_lock import DeviceClaim, claim_device
from search.pipeline import Pipeline
from search.progress import ProgressBar, Summary, best_trial, setup_logging, trial_line
from search.retry import DEFAULT_PATIENCE, DatabaseUnavailable, Retry, RetryingStorage, storage_failure
from search.signals import GracefulStop, WorkerInterrupted
from search.trials import STORAGE_FAILURES, Started, finished_count, run
from studies.export import describe
from studies.note import study_note
from studies.spec import SpecError, StudySpec, load_spec, validate_study_name
from studies.storage import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    create_or_load,
    mask,
    open_storage,
    parse_url,
    resolve_url,
    secrets_of,
)

log = logging.getLogger("search")

DEFAULT_SPEC = "studies/mnist_fast.toml"
# A worker whose every trial fails is burning its device on a bug: stop and say so.
MAX_FAILURES_IN_A_ROW = 10


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
                   help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="MNIST root holding MNIST/raw (default: $MNIST_DATA, else ~/.cache/fast-mnist)")
    p.add_argument("--threads", metavar="N", type=_at_least_one,
                   help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--share-device", action="store_true",
                   help="share the GPU with other --share-device workers (their timings disturb each other)")
    p.add_argument("--wait-device", action="store_true", help="wait for a busy GPU instead of exiting")
    p.add_argument("--sampler-seed", metavar="SEED", type=_seed,
                   help="sampler seed (default: the spec's [sampler] seed + this process's pid, so "
                        "workers started together do not all sample the same points)")
    p.add_argument("--db-patience", metavar="SECONDS", type=_positive_seconds, default=DEFAULT_PATIENCE,
                   help="how long to keep retrying a database that went away before exiting 1 "
                        f"(default {DEFAULT_PATIENCE:g})")
    p.add_argument("--heartbeat-interval", metavar="SECONDS", type=_at_least_one, default=HEARTBEAT_INTERVAL,
                   help=f"seconds between a running trial's heartbeats (default {HEARTBEAT_INTERVAL})")
    p.add_argument("--grace-period", metavar="SECONDS", type=_at_least_one, default=GRACE_PERIOD,
                   help="seconds without a heartbeat after which a trial counts as its worker's death, "
                        f"turns FAILED and is retried; give every worker of a study the same (default "
                        f"{GRACE_PERIOD})")
    p.add_argument("--prefetch", action="store_true",
                   help="ask and suggest the next trial, and tell the last one, on a background thread "
                        "while this one trains: for short (GPU) trials, where the storage work is a "
                        "large share of each; a stop then finds one trial asked, which turns FAILED "
                        "as not run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument("--verbose", action="store_true",
                   help="also log trial starts and the traceback of every failed trial")
    return p


@dataclass
class Worker:
    spec: StudySpec
    study: optuna.Study
    objective: Objective
    device: torch.device
    claim: DeviceClaim | None
    trial_attrs: dict[str, Any]  # stored on every trial this worker runs
    deadline: float | None = None  # time.time() past which no trial starts: [study] minutes


def default_spec() -> str:
    """studies/mnist_fast.toml from the working directory, else the copy installed with the package."""
    if Path(DEFAULT_SPEC).exists():
        return DEFAULT_SPEC
    return str(Path(__file__).resolve().parents[1] / DEFAULT_SPEC)


def default_sampler_seed(spec: StudySpec) -> int | None:
    # Workers started together would otherwise draw the same random startup points.
    return None if spec.sampler_seed is None else (spec.sampler_seed + os.getpid()) % 2**32


def device_key(device: torch.device) -> str:
    """The lock key: the GPU's UUID, which names one physical GPU whatever CUDA_VISIBLE_DEVICES
    renumbers it to in each process; the index where the UUID is unavailable."""
    try:
        return f"cuda-{torch.cuda.get_device_properties(device).uuid}"
    except (AttributeError, RuntimeError):
        return str(device)


def prepare(args: argparse.Namespace, stop: GracefulStop) -> Worker:
    """Everything that can fail on bad input happens here, and the study is made last: a bad spec,
    device, data folder or storage URL never leaves a half-made study behind."""
    spec = load_spec(args.spec or default_spec())
    name = validate_study_name(args.study) if args.study else spec.name
    url = resolve_url(args.storage)
    parse_url(url)  # a typo in the scheme is reported now, not after loading the data
    if args.grace_period <= args.heartbeat_interval:
        raise UserError(f"--grace-period ({args.grace_period} s) must be longer than --heartbeat-interval "
                         f"({args.heartbeat_interval} s), or every running trial would count as dead")
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    claim = None
    if device.type == "cuda":
        claim = claim_device(device_key(device), shared=args.share_device, wait=args.wait_device,
                             label=str(device), keep_waiting=lambda: not stop.requested, on_wait=log.info)
    with stop.interruptible():
        data = load_resident(resolve_root(args.data_dir), device)
    storage = RetryingStorage(open_storage(url, heartbeat_interval=args.heartbeat_interval,
                                           grace_period=args.grace_period),
                              Retry(patience=args.db_patience))
    # The yardstick goes into the new study's note, so it is timed before the study is made, and
    # after the storage answered: a wrong URL is reported at once, not after a training run.
    objective = Objective(spec.space, spec.base, spec.objective, data, train=interruptible(train_once, stop))
    with stop.interruptible():
        baseline = objective.measure_baseline()
    log.info("yardstick: the seed recipe takes %.3f s here; a run past %.3f s is stopped",
             baseline, objective.time_limit())
    seed = args.sampler_seed if args.sampler_seed is not None else default_sampler_seed(spec)
    note = study_note(spec, baseline, describe(fingerprint(device)))
    study, created = create_or_load(spec, storage, sampler_seed=seed, study_name=name, note=note)
    if not created:
        check_same_recipe(study, spec, url)
    threads = torch.get_num_threads()
    log.info("%s study %r in %s from %s: device %s (%d CPU thread%s), sampler %s seed %s, pid %d",
             "created" if created else "joined", name, mask(url), spec.source, device, threads,
             "" if threads == 1 else "s", spec.sampler_name, seed, os.getpid())
    # --prefetch is recorded because its background thread can slow the timed run beside it.
    trial_attrs = {"worker": {"host": socket.gethostname(), "pid": os.getpid(), "device": str(device),
                              "shared_device": bool(claim and claim.shared), "prefetch": args.prefetch}}
    created = study.user_attrs.get("created_at")
    deadline = (created + 60 * spec.minutes
                if spec.minutes is not None and isinstance(created, float | int) else None)
    return Worker(spec, study, objective, device, claim, trial_attrs, deadline)


def check_same_recipe(study: optuna.Study, spec: StudySpec, url: str) -> None:
    """Trials are compared by their seconds, so every worker of a study must train the same base
    recipe to the same target. A spec edited since the study was created would mix the two."""
    stored_base = study.user_attrs.get("base_config")
    if stored_base is not None and stored_base != spec.base.to_dict():
        differ = sorted(k for k in spec.base.to_dict() if stored_base.get(k) != getattr(spec.base, k))
        raise SpecError(f"study {study.study_name!r} in {mask(url)} was created with a different [train] "
                        f"section (differs in: {', '.join(differ) or 'keys'}); pass --study NEW_NAME "
                        "for the edited spec, or restore the spec")
    stored_target = study.user_attrs.get("accuracy_target")
    if stored_target is not None and stored_target != spec.objective.accuracy_target:
        raise SpecError(f"study {study.study_name!r} in {mask(url)} targets accuracy {stored_target}, "
                        f"the spec {spec.objective.accuracy_target}; pass --study NEW_NAME or fix the spec")


Train = Callable[[TrainConfig, Mnist, float], RunResult]


def interruptible(train: Train, stop: GracefulStop) -> Train:
    """`train` inside the stop's interruptible region: a second signal may cut training short,
    but never one of the objective's database writes around it."""

    def run(config: TrainConfig, data: Mnist, time_limit: float) -> RunResult:
        with stop.interruptible():
            return train(config, data, time_limit)

    return run


def stop_reason(args: argparse.Namespace, stop: GracefulStop, ran: int, started: float,
                summary: Summary, ahead: float = 0.0) -> str | None:
    """Why no further trial should start after `ran` trials (the ones this worker ran or runs),
    reading nothing from the storage; `ahead` seconds from now, for a prefetch. None to go on."""
    if stop.requested:
        return f"{_signal_name(stop)} received"
    if args.n_trials is not None and ran >= args.n_trials:
        return f"ran --n-trials {args.n_trials}"
    if args.timeout is not None and time.monotonic() + ahead - started >= args.timeout:
        return f"--timeout {args.timeout:g} s passed"
    if summary.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
        return (f"{summary.failures_in_a_row} trials in a row failed (last: {summary.last_failure}); "
                "rerun with --verbose for the tracebacks")
    return None


def budget_reason(worker: Worker, in_flight: int) -> str | None:
    """Why no trial should start: the study's budget, counting every worker's finished trials and
    this worker's `in_flight` one (a prefetch is asked while a trial trains)."""
    if worker.deadline is not None and time.time() >= worker.deadline:
        return f"the study's budget is reached ({worker.spec.minutes:g} minutes since it was created)"
    finished = finished_count(worker.study)
    if finished + in_flight < worker.spec.n_trials:
        return None
    running = ", and this worker's last one" if in_flight else ""
    return f"the study's budget is reached ({finished} of {worker.spec.n_trials} trials finished{running})"


def _signal_name(stop: GracefulStop) -> str:
    return signal.Signals(stop.signum or signal.SIGINT).name


def search(worker: Worker, args: argparse.Namespace, stop: GracefulStop) -> int:
    summary = Summary()
    bar = ProgressBar(args.n_trials, enabled=not args.no_progress)

    def on_finished(trial: FrozenTrial) -> None:  # on the background thread with --prefetch
        summary.add(trial)
        best = best_trial(worker.study)
        log.info(trial_line(trial, best))
        bar.update(best)

    pipe = Pipeline(worker.study, worker.objective, worker.trial_attrs, args.prefetch, on_finished)
    started = time.monotonic()
    try:
        reason, exit_code = run_trials(worker, args, stop, pipe, summary, started)
        bar.close()
        for line in summary.lines(reason, worker.study, time.monotonic() - started):
            log.info(line)
    except DatabaseUnavailable as error:
        held = sorted(set(pipe.held()) | ({error.trial} if error.trial is not None else set()))
        running = "no trial was running"
        if held:
            running = (f"{_trials(held)} RUNNING until {'its' if len(held) == 1 else 'their'} heartbeat "
                       f"is {args.grace_period} s old, then the next worker to look marks "
                       f"{'it' if len(held) == 1 else 'them'} FAILED and queues a retry")
        say_error(f"{error}; gave up after --db-patience {args.db_patience:g} s: {running}", args)
        return 1
    except STORAGE_FAILURES as error:
        say_error(f"the storage failed mid-run: {storage_failure(error)}", args)
        return 1
    finally:
        pipe.close()
        bar.close()
        if worker.claim is not None:
            worker.claim.release()
    # A second signal between two trials aborted nothing, but it still asked for an abort.
    return stop.exit_code if stop.aborted else exit_code


def run_trials(worker: Worker, args: argparse.Namespace, stop: GracefulStop, pipe: Pipeline,
               summary: Summary, started: float) -> tuple[str, int]:
    """Train trial after trial until a stop; the storage work goes through `pipe`. With --prefetch
    the next trial is started (asked, suggested) while this one trains. Returns (why it stopped,
    exit code)."""
    ran, run_seconds = 0, 0.0
    upcoming: Future[Started[Any] | str] | None = None
    reason: str | None = None
    exit_code = 0
    while reason is None:
        if upcoming is None:
            if (reason := stop_reason(args, stop, ran, started, summary)) is not None:
                break
            upcoming = pipe.start(lambda: budget_reason(worker, in_flight=0))
        trial, upcoming = upcoming.result(), None
        pipe.check()
        if isinstance(trial, str):
            reason = trial
        elif (reason := stop_reason(args, stop, ran, started, summary)) is not None:
            release(pipe, trial, reason, summary)  # asked before the stop came
        else:
            wanted = stop_reason(args, stop, ran + 1, started, summary, ahead=run_seconds) is None
            if args.prefetch and wanted:
                upcoming = pipe.start(lambda: budget_reason(worker, in_flight=1))
            log.debug("trial %d started", trial.trial.number)
            run_start = time.monotonic()
            outcome = run(worker.objective, trial)
            run_seconds = time.monotonic() - run_start
            ran += 1
            pipe.finish(trial, outcome)
            if stop.aborted:
                reason, exit_code = f"aborted on a second {_signal_name(stop)}", stop.exit_code
    if upcoming is not None and isinstance(prefetched := upcoming.result(), Started):
        release(pipe, prefetched, reason, summary)
    pipe.drain()
    if summary.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
        exit_code = exit_code or 1
    return reason, exit_code


def release(pipe: Pipeline, trial: Started[Any], reason: str, summary: Summary) -> None:
    """End a prefetched trial the stop came too late for: FAILED, "not run", and said so."""
    released = pipe.release(trial, reason).result()
    summary.not_run += 1
    log.info("trial %d FAIL | %s", released.number, released.user_attrs.get("fail_reason"))


def _trials(numbers: list[int]) -> str:
    if len(numbers) == 1:
        return f"trial {numbers[0]} stays"
    return f"trials {', '.join(map(str, numbers))} stay"


def quiet_optuna() -> None:
    """The worker's own lines are what a user reads: Optuna's INFO chatter and its warnings about
    experimental APIs (heartbeats with ask-and-tell, fail_stale_trials) would drown them."""
    optuna.logging.set_verbosity(logging.WARNING)
    # The RDB storage logs a warning for each database error before raising it; search/retry.py
    # already reports every such error once, with its retry, so that warning only repeats it.
    logging.getLogger("optuna.storages._rdb.storage").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with")


def say_error(message: str, args: argparse.Namespace) -> None:
    """The one `error:` line, with the storage password hidden even where a message quotes it."""
    print(f"error: {hide_passwords(message, secrets_of(resolve_url(args.storage)))}", file=sys.stderr)




def main(argv: list[str] | None = None) -> int:
    quiet_optuna()
    stop = GracefulStop()
    stop.install()
    args = parser().parse_args(argv)
    setup_logging(verbose=args.verbose, secrets=secrets_of(resolve_url(args.storage)))
    try:
        worker = prepare(args, stop)
    except UserError as error:
        say_error(str(error), args)
        return 2
    except STORAGE_FAILURES as error:  # the server went away between connecting and creating
        say_error(f"the storage failed while opening the study: {storage_failure(error)}", args)
        return 1
    except WorkerInterrupted:  # a second signal while the data loaded: no trial exists yet
        return stop.exit_code
    return search(worker, args, stop)


if __name__ == "__main__":
    sys.exit(main())
