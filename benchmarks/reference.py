"""The reference script (../shared/reference/seed_recipe.py), the timing anchor every speed figure
is compared with in the same run, run in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "seed_recipe.py"


def time_reference(
    data_dir: str | Path, seeds: str, device: str = "cpu", script: str | Path = REFERENCE
) -> dict[str, Any]:
    """One run of the reference script on `seeds` (comma-separated).

    Returns:
        Its JSON summary: runs (seed, seconds, accuracy), median_seconds, mean_accuracy, threads.
    """
    command = [sys.executable, str(script), "--data-dir", str(data_dir), "--seeds", seeds,
               "--device", device, "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        why = done.stderr.strip()[-600:]
        raise SystemExit(f"error: the reference script exited {done.returncode}: {why}")
    return json.loads(done.stdout.strip().splitlines()[-1])
