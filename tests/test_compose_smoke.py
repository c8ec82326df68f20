"""tools/compose_smoke.sh under pytest: docker-compose.yml run for real on CPUs (Postgres, 2 workers, the
dashboard, a worker killed mid-trial). Marked `docker`, which the default run leaves out (pyproject's
addopts); run it with `python -m pytest -m docker tests/test_compose_smoke.py`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.test_compose import COMPOSE

ROOT = Path(__file__).resolve().parents[1]


def docker_engine() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.docker
def test_compose_smoke() -> None:
    if COMPOSE != ["docker", "compose"]:
        pytest.skip("no Docker Compose v2 plugin (`docker compose`), which tools/compose_smoke.sh uses")
    if not docker_engine():
        pytest.skip("no Docker engine answers `docker info`")
    result = subprocess.run([str(ROOT / "tools" / "compose_smoke.sh")], capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "SUMMARY" in result.stdout
