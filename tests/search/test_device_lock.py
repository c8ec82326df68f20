"""The per-device lock, with real processes on a made-up GPU key (no GPU needed): one exclusive
holder per device, sharers only among sharers, and a lock that dies with its process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from search.device_lock import DeviceBusy, claim_device, lock_path

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
    assert first_line(sharer).startswith(f"busy: device {KEY} is held exclusively by another worker")


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
