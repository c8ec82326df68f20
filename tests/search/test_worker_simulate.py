"""`python -m search.worker --simulate PROFILE`: the real worker, CLI and all, on a simulated device,
in real time and fast-forward, alone and as an in-process fleet; export reads what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.export import choose

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "studies" / "mnist_fast.toml"


def spec_file(folder: Path, minutes: float, history: int = 100) -> Path:
    text = (
        SPEC.read_text()
        .replace("minutes = 14 ", f"minutes = {minutes:g} ")
        .replace("n_trials = 1000", "n_trials = 100000")
    )
    text = "\n".join(line for line in text.splitlines() if not line.startswith("history"))
    text = text.replace('name = "tpe"', f'name = "tpe"\nhistory = {history}', 1)
    path = folder / "spec.toml"
    path.write_text(text)
    return path


def worker(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "search.worker", "--no-progress", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_fast_forward_fleet_searches_its_simulated_minutes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    done = worker("--spec", str(spec_file(tmp_path, minutes=0.5)), "--storage", url,
                  "--simulate", "h100", "--fast-forward", "--workers", "4", "--sampler-seed", "3")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    study = optuna.load_study(study_name="mnist_fast", storage=url)
    trials = study.get_trials()
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}  # none left running
    assert {t.user_attrs["worker"]["fleet_index"] for t in trials} == {0, 1, 2, 3}
    assert {t.user_attrs["fingerprint"]["device"] for t in trials} == {"simulated h100"}
    # Four workers kept busy for 30 simulated seconds: their runs add up to about 4 x 30 s, and
    # no worker started a trial after the study's budget ended.
    simulated = sum(sum(t.user_attrs["seconds_per_seed"]) for t in trials)
    assert 60 < simulated < 4 * 30 + 4 * 10
    assert done.stdout.count("stopped: the study's budget is reached (0.5 minutes") == 4
    assert choose(trials).fingerprint["device"] == "simulated h100"


def test_a_simulated_worker_sleeps_in_real_time_and_export_reads_its_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'real_time.db'}"
    started = time.monotonic()
    done = worker("--spec", str(spec_file(tmp_path, minutes=10)), "--storage", url,
                  "--simulate", "l4", "--n-trials", "4")
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="mnist_fast", storage=url)
    slept = sum(sum(t.user_attrs.get("seconds_per_seed", [])) for t in study.get_trials())
    assert wall > slept > 0  # the yardstick and every seed of every trial, slept for real
    assert "device simulated l4 (simulated: nothing held)" in done.stdout
    out = tmp_path / "best.json"
    exported = subprocess.run(
        [sys.executable, "-m", "search.export", "--storage", url, "--study", "mnist_fast", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if exported.returncode == 0:  # 4 trials may hold no feasible one; then export says so
        assert json.loads(out.read_text())["fingerprint"]["device"] == "simulated l4"
    else:
        assert exported.stderr.startswith("error: no crowned trial")


def test_a_mixed_fleet_crowns_a_winner_on_each_device(tmp_path: Path) -> None:
    """2 simulated H100s and 2 simulated L4s on one study, as two fleets (two machines): each
    device is judged against its own recipe and best, so each gets a crowned winner (the refusal
    for a device with none: tests/search/test_export.py)."""
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    spec = spec_file(tmp_path, minutes=2)
    spec.write_text(spec.read_text().replace("crown_seeds = 20", "crown_seeds = 5"))
    fleets = [
        subprocess.Popen([sys.executable, "-m", "search.worker", "--no-progress", "--spec", str(spec),
                          "--storage", url, "--simulate", profile, "--fast-forward", "--workers", "2",
                          "--sampler-seed", str(seed)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed, profile in ((1, "h100"), (2, "l4"))
    ]
    for fleet in fleets:
        _, stderr = fleet.communicate(timeout=300)
        assert fleet.returncode == 0, stderr
    trials = optuna.load_study(study_name="mnist_fast", storage=url).get_trials()
    for device in ("simulated h100", "simulated l4"):
        winner = choose(trials, device=device).trial
        assert winner.user_attrs["fingerprint"]["device"] == device and winner.user_attrs["crowned"]
        assert len(winner.user_attrs["accuracies"]) >= 5
    exported = subprocess.run(
        [sys.executable, "-m", "search.export", "--storage", url, "--study", "mnist_fast", "--out", "-"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr
    rows = json.loads(exported.stdout)["per_fingerprint"]
    assert sorted(row["fingerprint"].split(" (")[0] for row in rows) == ["simulated h100", "simulated l4"]

