"""tools/slurm_smoke.sh under pytest: tools/slurm/worker.sbatch on a throwaway Slurm cluster on this host
(slurmctld, two slurmd as nodes n0 and n1, munged): two jobs with bad input, then a 2-task job array on
studies/smoke.toml in a fresh database of the local PostgreSQL; node n1 dies mid-trial, then the array
is cancelled mid-trial. Marked `slurm`, which the default run leaves out (pyproject's addopts); run it
with `python -m pytest -m slurm -n 0 -s tests/test_slurm.py` (about 2 minutes; as root: it installs
slurm-wlm and munge with apt-get when they are missing, and starts the daemons). docs/cluster.md#slurm."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ADMIN_URL, MNIST

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "tools" / "slurm_smoke.sh"
SKIPPED = 77  # the smoke's exit code when it cannot run here; its last line says why
DAEMONS = ("slurmctld", "slurmd", "sbatch", "munged")


def cannot_run() -> str | None:
    """Why the smoke cannot run here (checked before it starts anything), or None."""
    if os.geteuid() != 0:
        return "needs root: slurmd and munged run as root, and the smoke installs them when missing"
    if not all(shutil.which(d) for d in DAEMONS) and not shutil.which("apt-get"):
        return "Slurm and munge are not installed, and there is no apt-get to install slurm-wlm and munge"
    if not (MNIST / "MNIST" / "raw").is_dir():
        return f"real MNIST not found at {MNIST}"
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=5).close()
    except psycopg.OperationalError as error:
        return f"no PostgreSQL at {ADMIN_URL}: {str(error).strip().splitlines()[0]}"
    return None


def figure(pattern: str, line: str) -> re.Match[str]:
    found = re.search(pattern, line)
    assert found, f"{pattern!r} not in the summary:\n{line}"
    return found


@pytest.mark.slurm
def test_slurm_smoke() -> None:
    if reason := cannot_run():
        pytest.skip(reason)
    env = {**os.environ, "PYTHON": sys.executable, "MNIST_DATA": str(MNIST), "SMOKE_ADMIN_URL": ADMIN_URL}
    env.pop("OPTUNA_STORAGE", None)
    result = subprocess.run([str(SMOKE)], capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    lines = result.stdout.strip().splitlines() or [""]
    if result.returncode == SKIPPED:
        pytest.skip(lines[-1].removeprefix("SKIP: "))
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    summary = lines[-1]
    assert summary.startswith("SUMMARY slurm "), summary
    print(f"\n{summary}")

    # The study: every trial finished or FAILED, exactly one FAILED (the lost node's), none lost.
    counts = figure(r"trials (\d+): COMPLETE (\d+), PRUNED (\d+), FAILED (\d+), RUNNING (\d+), lost (\d+);",
                    summary)
    total, complete, pruned, failed, running, lost = map(int, counts.groups())
    assert (failed, running, lost) == (1, 0, 0)
    assert complete + pruned + failed == total
    # Node loss: its trial FAILED by the other task's stale check within the grace period (3 s) plus a
    # heartbeat (1 s) and some slack, re-run with the same parameters; Slurm requeued the task.
    node_loss = figure(r"node loss: trial (\d+) FAILED after ([\d.]+) s, re-run as trial (\d+) "
                       r"(COMPLETE|PRUNED) \(same params, task 0\), task 1 NODE_FAIL 0:0 requeued "
                       r"\(node DOWN after \d+ s\) and restarted;", summary)
    assert float(node_loss[2]) <= 3 + 1 + 4, summary
    assert int(node_loss[3]) > int(node_loss[1])
    # Graceful scancel: the trials running at the time finished, and both workers exited 0.
    figure(r"scancel: trials \d+(,\d+)? (COMPLETE|PRUNED)(,(COMPLETE|PRUNED))?, tasks ended in \d+ s: "
           r"task 0 CANCELLED 0:0, task 1 CANCELLED 0:0 \(Restarts 1\);", summary)
    # Bad input, worker.sbatch's (no storage) and the worker's (--n-trials 0): exit 2, FAILED 2:0.
    figure(r"bad input: no storage FAILED 2:0, --n-trials 0 FAILED 2:0$", summary)
