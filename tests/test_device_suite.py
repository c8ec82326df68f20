"""benchmarks/device_suite.py --quick end to end on the CPU, so the suite is known to run before a
GPU is borrowed for it: every row is there, with figures of the right kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "mnist"


@pytest.mark.slow
def test_the_quick_device_suite_runs_end_to_end(tmp_path: Path, worker_env: dict[str, str]) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/device_suite.py",
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(tmp_path),
            "--data-dir",
            str(MNIST),
        ],
        cwd=ROOT,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    suite = json.loads((tmp_path / "device_suite.json").read_text())
    rows = {row["row"].split(" (")[0].split(",")[0]: row for row in suite["rows"]}
    assert {
        "reference script",
        "objective.train",
        "channels_last off",
        "bf16 autocast on",
        "bf16 autocast off",
        "simulated cpu",
        "search",
    } <= set(rows)
    assert all(
        row["median_seconds"] > 0 and 0.5 < row["mean_accuracy"] <= 1
        for row in suite["rows"]
        if "median_seconds" in row
    )
    search = rows["search"]
    assert search["trials"] >= 1 and 0 < search["duty"] <= 1 and search["service_ms_per_trial"] > 0
    winner = suite["rows"][-1]
    assert winner["row"].startswith("winner") and len(winner["seeds"].split("..")) == 2
    table = [line for line in (tmp_path / "device_suite.md").read_text().splitlines() if line.startswith("|")]
    assert len(table) == len(suite["rows"]) + 2  # the header, its rule, a line per row
