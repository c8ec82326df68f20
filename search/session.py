"""A worker's session, once search/worker.py has parsed its command line: check the input, open
the device, the storage and the study (`open_worker`: nothing is written until all the input
has been checked), then run trials until a stop (`search`; search/loop.py shows a trial's whole life).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import warnings
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

from objective import attributes
from objective.cli import hide_passwords
from objective.errors import UserError
from objective.optuna_objective import Objective
from objective.result import describe_fingerprint
from objective.sim.device import profile_names
from search.clock import SYSTEM, Clock, VirtualClock
from search.device_lock import WaitAbandoned
from search.devices import Device, open_real, open_simulated
from search.fleet import run_on_virtual_clock
from search.heartbeat import Heartbeat
from search.loop import STORAGE_FAILURES, Stops, run_trials
from search.placement import check_device_name
from search.prefetch import run_trials_prefetching
from search.progress import ProgressBar, Summary, best_trial, setup_logging, trial_line
from search.retry import (
    DatabaseUnavailable,
    Retry,
    RetryingStorage,
    RetryScope,
    storage_failure,
)
from search.signals import GracefulStop, WorkerInterrupted
from studies.note import study_note
from studies.optuna_internals import RDB_STORAGE_LOGGER, set_constraints
from studies.spec import StudySpec, load_spec, validate_study_name
from studies.spec_file import SpecError, default_spec
from studies.storage import (
    JOURNAL,
    create_or_load,
    mask,
    open_journal,
    open_storage,
    parse_url,
    resolve_url,
    secrets_of,
)

log = logging.getLogger("search")


@dataclass
class Worker:
    spec: StudySpec
    study: optuna.Study
    storage: BaseStorage  # a RetryingStorage, or any BaseStorage (a simulated fleet's in memory)
    objective: Objective
    device: Device
    trial_attrs: dict[str, Any]  # stored on every trial this worker runs
    prefetch: bool  # search/prefetch.py
    grace_period: float
    clock: Clock = SYSTEM
    deadline: float | None = None  # clock.time() past which no trial starts: [study] minutes

    def adopt_thread(self) -> None:
        """Let a thread of --prefetch's have its storage calls retried too."""
        adopt_thread(self.storage)


def adopt_thread(storage: BaseStorage) -> None:
    """Retry the calling thread's calls on `storage`, where it retries at all."""
    adopt = getattr(storage, "adopt_thread", None)
    if callable(adopt):
        adopt()


def default_sampler_seed(spec: StudySpec) -> int | None:
    # Workers started together would otherwise draw the same random startup points. The host name
    # as well as the pid: in a container every worker is pid 1, while its host name is its own.
    if spec.sampler_seed is None:
        return None
    return (spec.sampler_seed + zlib.crc32(f"{socket.gethostname()} {os.getpid()}".encode())) % 2**32


def check_args(args: argparse.Namespace) -> tuple[StudySpec, str, str]:
    """Everything about the command line that is wrong before anything starts: (spec, study
    name, storage URL)."""
    spec = load_spec(args.spec or default_spec())
    name = validate_study_name(args.study) if args.study else spec.name
    url = resolve_url(args.storage)
    parse_url(url)  # a typo in the scheme is reported now, not after loading the data
    if args.grace_period <= args.heartbeat_interval:
        raise UserError(f"--grace-period ({args.grace_period} s) must be longer than --heartbeat-interval "
                         f"({args.heartbeat_interval} s), or every running trial would count as dead")
    if args.simulate is not None and args.simulate not in profile_names():
        raise UserError(f"unknown --simulate profile {args.simulate!r}; "
                         f"choose one of {', '.join(profile_names())}")
    if args.fast_forward and args.simulate is None:
        raise UserError("--fast-forward needs --simulate PROFILE: a real run cannot skip its seconds")
    if args.workers > 1 and not args.fast_forward:
        raise UserError("--workers N needs --fast-forward; start N processes for N real-time workers")
    check_device_name(args.device)
    return spec, name, url


def open_study_storage(url: str, args: argparse.Namespace) -> BaseStorage:
    """The study's storage, its calls retried for --db-patience: Optuna's RDBStorage behind the
    retrying storage, or the journal (studies/journal.py), which retries its own appends."""
    # Heartbeats are wall-clock seconds: in virtual time every trial would look dead or alive forever.
    heartbeat, retry = not args.fast_forward, Retry(patience=args.db_patience)
    if parse_url(url).drivername == JOURNAL:
        scope = RetryScope(retry)
        return open_journal(url, heartbeat, args.heartbeat_interval, args.grace_period, retry=scope.call,
                            adopt_thread=scope.adopt_thread)
    return RetryingStorage(open_storage(url, heartbeat=heartbeat, heartbeat_interval=args.heartbeat_interval,
                                        grace_period=args.grace_period), retry)


def open_device(args: argparse.Namespace, graceful_stop: GracefulStop, clock: Clock, index: int) -> Device:
    if args.simulate is not None:
        seed = None if args.sampler_seed is None else args.sampler_seed + 7919 * index
        return open_simulated(args.simulate, clock, seed)
    return open_real(args.device, args.threads, args.data_dir, args.share_device, args.wait_device,
                     keep_waiting=lambda: not graceful_stop.requested, on_wait=log.info,
                     interruptible=graceful_stop.interruptible)


def open_worker(args: argparse.Namespace, graceful_stop: GracefulStop, clock: Clock = SYSTEM,
                storage: BaseStorage | None = None, index: int = 0) -> Worker:
    """Everything that can fail on bad input happens here, and the study is made last: a bad spec,
    device, data folder or storage URL never leaves a half-made study behind. `storage` and
    `index`: a simulated fleet's shared storage, and which of its workers this is."""
    spec, name, url = check_args(args)
    device = open_device(args, graceful_stop, clock, index)
    try:
        return _open_worker(args, graceful_stop, clock, storage, index, spec, name, url, device)
    except BaseException:
        device.close()
        raise


def _open_worker(args: argparse.Namespace, graceful_stop: GracefulStop, clock: Clock,
                 storage: BaseStorage | None, index: int, spec: StudySpec, name: str, url: str,
                 device: Device) -> Worker:
    storage = storage if storage is not None else open_study_storage(url, args)
    # The yardstick goes into the new study's note, so it is timed before the study is made, and
    # after the storage answered: a wrong URL is reported at once, not after a training run.
    objective = Objective(spec.space, spec.base, spec.objective, device.run, clock=clock.monotonic,
                          set_constraints=set_constraints)
    with graceful_stop.interruptible():
        baseline = objective.measure_baseline()
    log.info("yardstick: the seed recipe takes %.3f s here; a run past %.3f s is stopped",
             baseline, objective.run_limit())
    seed = args.sampler_seed if args.sampler_seed is not None else default_sampler_seed(spec)
    seed = None if seed is None else (seed + index) % 2**32
    note = study_note(spec, baseline, describe_fingerprint(device.fingerprint))
    study, created = create_or_load(spec, storage, sampler_seed=seed, study_name=name, note=note,
                                    now=clock.time())
    if not created:
        check_same_recipe(study, spec, url)
    log.info("%s study %r in %s from %s: device %s (%s), sampler %s seed %s, pid %d",
             "created" if created else "joined", name, mask(url), spec.source, device.name,
             held_in_words(device), spec.sampler_name, seed, os.getpid())
    # A GPU's timed run leaves the host's cores free for the service; a CPU's uses them.
    on_gpu = device.fingerprint.get("device_type") == "cuda" or args.simulate not in (None, "cpu")
    prefetch = args.prefetch if args.prefetch is not None else on_gpu
    # prefetch is recorded because its background thread shares this host's cores with the run.
    trial_attrs = {attributes.WORKER: {"host": socket.gethostname(), "pid": os.getpid(),
                                       "device": device.name, "shared_device": device.claim.shared,
                                       "prefetch": prefetch}}
    if args.workers > 1:
        trial_attrs[attributes.WORKER]["fleet_index"] = index
    created_at = study.user_attrs.get(attributes.STUDY_CREATED_AT)
    deadline = (created_at + 60 * spec.minutes
                if spec.minutes is not None and isinstance(created_at, float | int) else None)
    return Worker(spec, study, storage, objective, device, trial_attrs, prefetch, args.grace_period,
                  clock, deadline)


def held_in_words(device: Device) -> str:
    """`cores 0-1 held by this worker alone, 2 torch threads`, or what a simulated device holds."""
    if device.simulated:
        return "simulated: nothing held"
    count = device.threads
    threads = "" if count is None else f", {count} torch thread{'s' * (count != 1)}"
    held = "shared with other --share-device workers" if device.claim.shared else "held by this worker alone"
    return f"{device.claim.label} {held}{threads}"


def check_same_recipe(study: optuna.Study, spec: StudySpec, url: str) -> None:
    """Trials are compared against the seed recipe by one set of rules, so every worker of a study
    must train the same base recipe and judge it by the same [objective] (the bar, the seeds, the
    margins, the penalty). A spec edited since the study was created would mix the two."""
    stored_base = study.user_attrs.get(attributes.STUDY_BASE_CONFIG)
    if stored_base is not None and stored_base != spec.base.to_dict():
        differ = sorted(k for k in spec.base.to_dict() if stored_base.get(k) != getattr(spec.base, k))
        raise SpecError(f"study {study.study_name!r} in {mask(url)} was created with a different [train] "
                        f"section (differs in: {', '.join(differ) or 'keys'}); pass --study NEW_NAME "
                        "for the edited spec, or restore the spec")
    stored = study.user_attrs.get(attributes.STUDY_OBJECTIVE)
    wanted = asdict(spec.objective)
    if stored is not None and stored != wanted:
        differ = ", ".join(f"{key} {stored.get(key)} there, {value} here"
                           for key, value in wanted.items() if stored.get(key) != value)
        raise SpecError(f"study {study.study_name!r} in {mask(url)} judges trials by another [objective] "
                        f"(differs in: {differ or 'keys'}); pass --study NEW_NAME or fix the spec")


def search(worker: Worker, args: argparse.Namespace, graceful_stop: GracefulStop) -> int:
    """Run trials until a stop (search/loop.py, or search/prefetch.py); returns the exit code."""
    study, summary = worker.study, Summary()
    bar = ProgressBar(args.n_trials, enabled=not args.no_progress)
    heartbeat = Heartbeat(study, worker.storage, worker.grace_period)
    stops = Stops(graceful_stop, n_trials=args.n_trials, timeout=args.timeout, budget=worker.spec.n_trials,
                  minutes=worker.spec.minutes, deadline=worker.deadline, clock=worker.clock)

    def on_told(trial: FrozenTrial) -> None:  # on the background thread with --prefetch
        summary.add(trial)
        best = best_trial(study)
        log.info(trial_line(trial, best))
        bar.update(best)

    def on_released(trial: FrozenTrial) -> None:
        summary.not_run += 1
        log.info("trial %d FAIL | %s", trial.number, trial.user_attrs.get(attributes.FAIL_REASON))

    try:
        heartbeat.check_stale()  # a dead worker's trials, before asking: its retry may be waiting
        if worker.prefetch:
            reason = run_trials_prefetching(study, worker.objective, heartbeat, stops, worker.trial_attrs,
                                            on_told, on_released, worker.adopt_thread)
        else:
            reason = run_trials(study, worker.objective, heartbeat, stops, worker.trial_attrs, on_told)
        bar.close()
        for line in summary.lines(reason, study, worker.clock.monotonic() - stops.started):
            log.info(line)
    except DatabaseUnavailable as error:
        held, running = heartbeat.held(), "no trial was running"
        if held:
            one = len(held) == 1
            running = (f"trial{'' if one else 's'} {', '.join(map(str, held))} stay{'s' if one else ''} "
                       f"RUNNING until {'its' if one else 'their'} heartbeat is {worker.grace_period:g} s "
                       f"old, then the next worker to look marks {'it' if one else 'them'} FAILED and "
                       "queues a retry")
        say_error(f"{error}; gave up after --db-patience {args.db_patience:g} s: {running}", args)
        return 1
    except STORAGE_FAILURES as error:
        say_error(f"the storage failed mid-run: {storage_failure(error)}", args)
        return 1
    finally:
        heartbeat.close()
        bar.close()
        worker.device.close()
    return stops.exit_code


def quiet_optuna() -> None:
    """The worker's own lines are what a user reads: Optuna's INFO chatter and its warnings about
    experimental APIs (heartbeats with ask-and-tell, fail_stale_trials) would drown them."""
    optuna.logging.set_verbosity(logging.WARNING)
    logging.getLogger(RDB_STORAGE_LOGGER).setLevel(logging.ERROR)  # search/retry.py says it once
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with")


def say_error(message: str, args: argparse.Namespace) -> None:
    """The one `error:` line, with the storage password hidden even where a message quotes it."""
    print(f"error: {hide_passwords(message, secrets_of(resolve_url(args.storage)))}", file=sys.stderr)




def fast_forward(args: argparse.Namespace, graceful_stop: GracefulStop) -> int:
    """--simulate --fast-forward: --workers simulated workers on one virtual clock (search/fleet.py)."""
    _, _, url = check_args(args)
    storage = open_study_storage(url, args)
    clock = VirtualClock()

    def one(index: int) -> int:
        adopt_thread(storage)
        return search(open_worker(args, graceful_stop, clock, storage, index), args, graceful_stop)

    return run_on_virtual_clock(args.workers, clock, one)


def run(args: argparse.Namespace, graceful_stop: GracefulStop) -> int:
    """`python -m search.worker` once its command line is parsed: open the worker, search; the
    exit code (search/worker.py lists them)."""
    quiet_optuna()
    setup_logging(verbose=args.verbose, secrets=secrets_of(resolve_url(args.storage)))
    try:
        if args.fast_forward:
            return fast_forward(args, graceful_stop)
        worker = open_worker(args, graceful_stop)
    except UserError as error:
        say_error(str(error), args)
        return 2
    except STORAGE_FAILURES as error:  # the server went away between connecting and creating
        say_error(f"the storage failed while opening the study: {storage_failure(error)}", args)
        return 1
    except WaitAbandoned as error:  # a signal while waiting for a device: nothing ran
        log.info("stopped while waiting: %s", error)
        return 0
    except WorkerInterrupted:  # a second signal while the data loaded: no trial exists yet
        return graceful_stop.exit_code
    return search(worker, args, graceful_stop)

