"""The per-device lock, with real processes on a made-up GPU key (no GPU needed): one exclusive
holder per device, sharers only among sharers, and a lock that dies with its process. Then the same
locks over made-up lists of GPUs and cores: --device auto's first free GPU, and the CPU core lease."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from objective.errors import UserError
from search.device_lock import (
    DeviceBusy,
    WaitAbandoned,
    claim_cores,
    claim_device,
    claim_first_free,
    core_list,
    lock_path,
)
from search.placement import place

ROOT = Path(__file__).resolve().parents[2]
KEY = "cuda:7"

# Claims KEY (argv[1] = "shared" or "exclusive", argv[2] = "wait" to queue for it), prints what
# happened, then holds the claim until stdin closes.
CLAIMER = textwrap.dedent("""
    import sys
    from search.device_lock import DeviceBusy, claim_device
    try:
        claim = claim_device(sys.argv[3], shared=sys.argv[1] == "shared", wait=sys.argv[2] == "wait")
    except DeviceBusy as error:
        print(f"busy: {error}", flush=True)
        sys.exit(3)
    print("held", flush=True)
    sys.stdin.read()
""")


@pytest.fixture(autouse=True)
def private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAST_MNIST_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path / "locks"


@pytest.fixture
def claimers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def claim_in_process(started: list[subprocess.Popen[str]], mode: str,
                     wait: bool = False) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", CLAIMER, mode, "wait" if wait else "now", KEY],
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started.append(process)
    return process


def first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def test_a_second_exclusive_claim_fails_with_the_holder_named(claimers: list[subprocess.Popen[str]]) -> None:
    holder = claim_in_process(claimers, "exclusive")
    assert first_line(holder) == "held"
    second = claim_in_process(claimers, "exclusive")
    line = first_line(second)
    assert second.wait(timeout=30) == 3
    assert line.startswith(f"busy: device {KEY} is in use by another worker (pid {holder.pid})"), line
    assert "--share-device" in line and "--wait-device" in line


def test_sharers_share_but_never_with_an_exclusive_holder(claimers: list[subprocess.Popen[str]]) -> None:
    first = claim_in_process(claimers, "shared")
    assert first_line(first) == "held"
    second = claim_in_process(claimers, "shared")
    assert first_line(second) == "held"
    exclusive = claim_in_process(claimers, "exclusive")
    assert first_line(exclusive).startswith(f"busy: device {KEY} is in use")
    assert exclusive.wait(timeout=30) == 3


def test_a_sharer_is_refused_by_an_exclusive_holder(claimers: list[subprocess.Popen[str]]) -> None:
    holder = claim_in_process(claimers, "exclusive")
    assert first_line(holder) == "held"
    sharer = claim_in_process(claimers, "shared")
    line = first_line(sharer)
    assert line.startswith(f"busy: device {KEY} is in use by another worker (pid {holder.pid})"), line
    assert "held exclusively" in line


def test_the_lock_dies_with_its_process(claimers: list[subprocess.Popen[str]]) -> None:
    holder = claim_in_process(claimers, "exclusive")
    assert first_line(holder) == "held"
    holder.kill()  # SIGKILL: no cleanup code runs, the kernel releases the lock
    holder.wait()
    claim = claim_device(KEY)
    claim.release()


def test_a_waiting_claim_gets_the_device_once_it_is_free(claimers: list[subprocess.Popen[str]]) -> None:
    holder = claim_in_process(claimers, "exclusive")
    assert first_line(holder) == "held"
    waiter = claim_in_process(claimers, "exclusive", wait=True)
    time.sleep(1.5)
    assert waiter.poll() is None  # still queued
    assert holder.stdin is not None
    holder.stdin.close()  # the holder exits
    assert first_line(waiter) == "held"


def test_claims_in_one_process_conflict_too() -> None:
    """flock belongs to the open file, not the process: a second claim from the same process on
    the same device fails, and succeeds once the first is released."""
    claim = claim_device(KEY)
    with pytest.raises(DeviceBusy, match=f"pid {os.getpid()}"):
        claim_device(KEY)
    claim.release()
    claim_device(KEY).release()


def test_lock_files_are_named_safely(private_lock_dir: Path) -> None:
    assert lock_path("cuda:0") == private_lock_dir / "cuda_0.lock"
    assert lock_path("cuda-GPU-../../etc").parent == private_lock_dir


def once_then_stop() -> tuple[list[str], Callable[[], bool]]:
    """(lines the waiter announced, a keep_waiting that allows one poll): a wait, seen and ended."""
    polls: list[None] = []

    def keep_waiting() -> bool:
        polls.append(None)
        return len(polls) == 1

    return [], keep_waiting


GPUS = ["cuda-GPU-aaaa", "cuda-GPU-bbbb", "cuda-GPU-cccc"]  # three made-up GPUs' lock keys
LABELS = ["cuda:0", "cuda:1", "cuda:2"]


def test_auto_takes_the_first_gpu_nobody_holds_and_the_one_beyond_the_last_waits() -> None:
    claims = [claim_first_free(GPUS, LABELS) for _ in GPUS]
    assert [claim.index for claim in claims] == [0, 1, 2]
    said, keep_waiting = once_then_stop()
    with pytest.raises(WaitAbandoned):
        claim_first_free(GPUS, LABELS, keep_waiting=keep_waiting, on_wait=said.append)
    assert said == [f"every GPU is in use (cuda:0 by another worker (pid {os.getpid()}); cuda:1 by another "
                    f"worker (pid {os.getpid()}); cuda:2 by another worker (pid {os.getpid()})); waiting"]
    claims[1].release()  # the worker on cuda:1 ends: the next one gets cuda:1, never a shared GPU
    assert claim_first_free(GPUS, LABELS).index == 1


class TwoGpus:
    """What place() asks of a training process, on a made-up host with two GPUs."""

    def __init__(self) -> None:
        self.device = ""

    def gpus(self) -> list[tuple[str, str]]:
        return [("cuda-fake-0", "Fake GPU"), ("cuda-fake-1", "Fake GPU")]

    def load(self, device: str, threads: int | None, cores: tuple[int, ...], data_dir: str | None) -> str:
        self.device = device
        return device


def test_auto_spreads_workers_over_the_gpus_the_training_process_lists() -> None:
    """place('auto') with two GPUs: each claim takes the next GPU, the third waits."""
    trainers = [TwoGpus() for _ in range(3)]
    claims = [place("auto", None, trainer, None) for trainer in trainers[:2]]  # type: ignore[arg-type]
    assert [trainer.device for trainer in trainers[:2]] == ["cuda:0", "cuda:1"]
    with pytest.raises(WaitAbandoned, match="every GPU is in use"):
        place("auto", None, trainers[2], None, keep_waiting=lambda: False)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="does not exist: this machine has 2 GPU"):
        place("cuda:2", None, trainers[2], None)  # type: ignore[arg-type]
    for claim in claims:
        claim.release()


CORES = [900, 901, 903]  # made-up core numbers: the lease never touches this host's real cores' files


def test_a_core_lease_takes_every_core_by_default_and_the_next_worker_waits() -> None:
    whole = claim_cores(None, cores=CORES)
    assert whole.cores == (900, 901, 903) and whole.label == "cores 900-901,903"
    said, keep_waiting = once_then_stop()
    with pytest.raises(WaitAbandoned):
        claim_cores(1, cores=CORES, keep_waiting=keep_waiting, on_wait=said.append)
    assert said == [f"1 of cores 900-901,903 wanted, fewer are free (held by another worker (pid "
                    f"{os.getpid()})); waiting"]
    whole.release()
    assert claim_cores(1, cores=CORES).cores == (900,)


def test_one_thread_workers_get_a_core_each_and_hold_none_while_waiting() -> None:
    first, second = claim_cores(1, cores=CORES[:2]), claim_cores(1, cores=CORES[:2])
    assert (first.cores, second.cores) == ((900,), (901,))
    first.release()
    # A worker that wants two cores finds one free: it waits holding nothing, so a one-core worker
    # still gets the free core rather than deadlocking behind it.
    with pytest.raises(WaitAbandoned):
        claim_cores(2, cores=CORES[:2], keep_waiting=lambda: False)
    assert claim_cores(1, cores=CORES[:2]).cores == (900,)


def test_sharers_share_every_core_and_an_exclusive_lease_waits_for_them() -> None:
    """A sharer asking for one thread still covers every core: sharers float over them all."""
    sharers = [claim_cores(count, shared=True, cores=CORES) for count in (None, 1)]
    assert all(claim.shared and claim.cores == tuple(CORES) for claim in sharers)
    with pytest.raises(WaitAbandoned):
        claim_cores(1, cores=CORES, keep_waiting=lambda: False)


def test_more_threads_than_cores_is_bad_input() -> None:
    with pytest.raises(DeviceBusy, match=r"--threads 4 asks for more cores than this process may use "
                                         r"\(3: 900-901,903\); pass --threads 3 or fewer"):
        claim_cores(4, cores=CORES)


def test_core_lists_read_like_taskset() -> None:
    assert core_list([5, 0, 1, 2]) == "0-2,5"
    assert core_list([3]) == "3"
