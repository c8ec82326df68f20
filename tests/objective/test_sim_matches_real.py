"""The simulated `cpu` profile against real runs on this machine: the mean accuracy of the seed
recipe within 0.05 points, and the cost model's order of two configs (objective/sim/ says how it
was fitted).

The profile models the CPU it was fitted on (model.json's `fitted_on`), with all its cores; on
another CPU the test says so and skips. Seconds are not a behaviour: this VM's speed moves between
days by more than any useful margin, and not uniformly (on 2026-12-04 the recipe took 1.5x the seconds of
its fit and twice its widths 2.0-2.7x the model's, docs/simulator.md), so the fit's agreement in seconds is
printed by `python -m objective.sim.fit` on its own day, not tested. What a simulated search relies
on is the order: the test times the recipe and a config the model calls 2.4x slower, interleaved in
one process so both share the moment's speed, and checks that the machine finds it slower by at
least a quarter of the modelled excess, on the fastest run of each (load only adds time). A quarter,
not more: beside the suite's other test process the ratio compresses (2026-12-06, EPYC: 1.52x beside
it, against 2.36x modelled; alone the same test passes at half)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from objective.config import TrainConfig
from objective.sim.device import MODEL_FILE, load_accuracy_model, load_profile
from objective.trainer_process import TrainingProcess
from search.device_lock import claim_cores

RECIPE_SEEDS = range(5)  # the accuracy check's seeds; the first three also time the recipe
WIDE = TrainConfig(conv1_width=48, conv2_width=64)  # twice the recipe's conv widths


@pytest.mark.slow
def test_the_cpu_profile_agrees_with_real_runs_here(mnist_root: Path) -> None:
    fitted = json.loads(MODEL_FILE.read_text())["fitted_on"]
    trainer = TrainingProcess()
    recipe_runs, wide_seconds = [], []
    try:
        claim = claim_cores(None)
        try:
            trainer.load("cpu", fitted["threads"], claim.cores, str(mnist_root))
            if (
                trainer.fingerprint["device"] != fitted["cpu"]
                or trainer.fingerprint["cores"] < fitted["threads"]
            ):
                pytest.skip(
                    f"the cpu profile models {fitted['cpu']} with {fitted['threads']} threads; "
                    f"this is {trainer.fingerprint['device']} with {trainer.fingerprint['cores']} cores"
                )
            for seed in RECIPE_SEEDS:
                recipe_runs.append(trainer.run(TrainConfig(seed=seed), 120.0))
                if seed < 3:
                    wide_seconds.append(trainer.run(WIDE.replace(seed=seed), 240.0).seconds)
        finally:
            claim.release()
    finally:
        trainer.close()
    if bool(recipe_runs[0].fingerprint.get("bf16_autocast")) != fitted["bf16"]:
        pytest.skip(f"the cpu profile was fitted with bf16 autocast {'on' if fitted['bf16'] else 'off'}; "
                    "this CPU resolves it the other way")
    profile = load_profile("cpu")
    modelled = profile.true_seconds(WIDE) / profile.true_seconds(TrainConfig())
    measured = min(wide_seconds) / min(run.seconds for run in recipe_runs[:3])
    assert measured >= 1 + (modelled - 1) / 4, (
        f"twice the recipe's widths takes {measured:.2f}x the recipe here, the cpu profile (fitted "
        f"{fitted['date']}) says {modelled:.2f}x: the trainer's cost moved; refit with "
        "benchmarks/measure_sim_runs.py and python -m objective.sim.fit")
    real_accuracy = statistics.fmean(run.accuracy for run in recipe_runs)
    simulated_accuracy = load_accuracy_model().true_accuracy(TrainConfig())
    assert 100 * abs(simulated_accuracy - real_accuracy) <= 0.05
