"""The simulated device (objective/sim/device.py): draws that behave like runs, costs that behave
like the hardware, and no torch. The check against a real run is test_sim_matches_a_real_run."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from objective.config import TrainConfig
from objective.sim.device import (
    MODEL_FILE,
    SimulatedDevice,
    load_accuracy_model,
    load_profile,
    profile_names,
    total_steps,
)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = TrainConfig()


def device(profile: str = "h100", seed: int = 0) -> tuple[SimulatedDevice, list[float]]:
    slept: list[float] = []
    return SimulatedDevice(
        load_profile(profile),
        load_accuracy_model(),
        sleep=slept.append,
        now=lambda: 0.0,
        rng=random.Random(seed),
    ), slept


def test_the_profiles_the_worker_offers() -> None:
    assert {"h100", "a100", "l4", "cpu"} <= set(profile_names())


def test_one_seed_always_gives_one_accuracy_and_a_fresh_seed_a_fresh_draw() -> None:
    first, _ = device(seed=1)
    second, _ = device("l4", seed=2)
    runs = [first.run(RECIPE.replace(seed=seed)) for seed in range(40)]
    again = [second.run(RECIPE.replace(seed=seed)) for seed in range(40)]
    assert [r.accuracy for r in runs] == [r.accuracy for r in again]  # nor does the device matter
    assert len({r.accuracy for r in runs}) > 5
    assert all(round(r.accuracy * 10_000) == r.accuracy * 10_000 for r in runs)  # of 10,000 images
    # The speed knobs change no draw: they never change what a run computes.
    fast = RECIPE.replace(channels_last=False, eval_batch=500, check_every=10)
    assert first.run(fast).accuracy == first.run(RECIPE).accuracy


def test_accuracies_spread_about_the_true_mean_as_measured() -> None:
    model = load_accuracy_model()
    accuracies = [model.accuracy(RECIPE.replace(seed=seed)) for seed in range(2000)]  # all 10,000 images
    assert statistics.fmean(accuracies) == pytest.approx(model.true_accuracy(RECIPE), abs=0.0002)
    fitted = json.loads(MODEL_FILE.read_text())["accuracy"]["spread"]
    error = 1 - model.true_accuracy(RECIPE)
    assert statistics.stdev(accuracies) == pytest.approx(fitted * error, rel=0.15)


def test_the_halves_split_one_draw_with_the_measured_shift_and_luck() -> None:
    model = load_accuracy_model()
    sim, _ = device()
    runs = [(sim.run(RECIPE.replace(seed=seed)), model.accuracy(RECIPE.replace(seed=seed)))
            for seed in range(2000)]
    # a seed's halves average to its 10,000-image draw, up to the config's own image luck
    offsets = [run.test_accuracy - drawn for run, drawn in runs]
    assert max(offsets) - min(offsets) <= 2 / 5000 + 1e-12
    assert abs(statistics.fmean(offsets)) <= 4 * model.half_config_sd
    assert all(round(run.holdout_accuracy * 5000) == pytest.approx(run.holdout_accuracy * 5000)
               for run, _ in runs)
    # selection minus held-out: within one config, the seed's luck on each half
    differences = [run.accuracy - run.holdout_accuracy for run, _ in runs]
    assert statistics.stdev(differences) == pytest.approx(2 * model.half_seed_sd, rel=0.15)
    # over many configs, the config's luck averages out and the shift both halves share is left
    configs = [RECIPE.replace(lr=0.005 + 0.00002 * k) for k in range(400)]
    shifts = [(run.accuracy - run.holdout_accuracy) / 2 for run in map(sim.run, configs)]
    assert statistics.fmean(shifts) == pytest.approx(model.half_shift, abs=0.0001)


def test_a_run_sleeps_the_seconds_it_reports() -> None:
    sim, slept = device()
    result = sim.run(RECIPE)
    assert slept == [result.seconds]
    assert result.fingerprint["device"] == "simulated h100"
    assert result.steps == total_steps(RECIPE) == 235
    assert not result.over_time and 0 < result.train_seconds < result.seconds


def test_costs_follow_the_work() -> None:
    h100, a100, l4 = (load_profile(name) for name in ("h100", "a100", "l4"))
    assert h100.true_seconds(RECIPE) < a100.true_seconds(RECIPE) < l4.true_seconds(RECIPE)
    for profile in (h100, load_profile("cpu")):
        seconds = profile.true_seconds
        # More steps never cost less; the cpu profile's fitted per-step cost is 0 (objective/sim/
        # model.json), so there only the assumed GPU profile's must be strictly more.
        smaller, larger = seconds(RECIPE.replace(batch_size=128)), seconds(RECIPE.replace(batch_size=512))
        assert smaller >= seconds(RECIPE) >= larger
        if profile is h100:
            assert smaller > seconds(RECIPE) > larger
        assert seconds(RECIPE.replace(epochs=2.0)) > seconds(RECIPE)
        assert seconds(RECIPE.replace(conv2_width=64)) > seconds(RECIPE)
        assert seconds(RECIPE.replace(batch_norm="both")) > seconds(RECIPE)


def test_clock_noise_is_a_spread_about_one_with_rare_spikes() -> None:
    sim, _ = device(seed=3)
    factors = [sim.clock_factor() for _ in range(5000)]
    noise = load_profile("h100").noise
    assert statistics.median(factors) == pytest.approx(1.0, abs=0.05)
    assert statistics.stdev(math.log(f) for f in factors) < 3 * (noise.spread + noise.drift + 0.01)
    spikes = sum(f > 1 + noise.spike_size / 2 for f in factors) / len(factors)
    assert spikes < 5 * noise.spike_rate + 0.01


def test_a_run_past_the_time_limit_is_stopped_there() -> None:
    sim, slept = device("cpu")
    limit = 0.5 * load_profile("cpu").true_seconds(RECIPE)
    result = sim.run(RECIPE, time_limit=limit)
    one_check = RECIPE.check_every * result.seconds / result.steps
    assert result.over_time and limit < result.seconds <= limit + one_check
    assert result.steps < total_steps(RECIPE) and slept == [result.seconds]


def test_simulating_imports_no_torch() -> None:
    code = (
        "import sys, objective.sim.device, search.worker, search.session, search.export\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
