"""Fit the simulated device to real runs: `python -m objective.sim.fit [--runs CSV] [--out JSON]`.

Reads the runs benchmarks/measure_sim_runs.py measured (objective/sim/runs_cpu.csv) and writes
objective/sim/model.json, then prints what the fit explains and what it does not:
- accuracy: ridge regression of log(1 - accuracy) on `device.features`, standardized and robust
  (reweighted), its strength chosen by leave-one-config-out cross-validation on the runs near the
  bar; the per-seed spread from the configs run on several seeds (the recipe's many seeds
  included); runs that learned nothing (one class) as a collapse rate past a learning rate;
- the `cpu` profile: non-negative least squares of the seconds on `device.cost_features` in
  relative error, spikes left out; the reference script's seconds in the same session beside it;
- clock noise: from the seed recipe's runs spread over the session (`fit_noise`).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

from objective.config import TrainConfig
from objective.sim.device import FEATURE_NAMES, HERE, MODEL_FILE, cost_features, features

RUNS_FILE = HERE / "runs_cpu.csv"
HALVES_FILE = HERE / "halves_cpu.csv"  # runs scored on both halves of the test images
SPIKE = 1.3  # for the cost fit: a run this much slower than the others of its kind is left out
SPIKE_SIGMAS = 3.0  # for the clock noise: a recipe run this many spreads above its neighbours is a spike
LAGS = 5
ALPHAS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
ROBUST_SCALE, ROBUST_ROUNDS = 0.25, 8
COLLAPSED = 0.5  # a run below this accuracy learned nothing (one class: 11.35 %)
NEAR_BAR = 0.985  # the cross-validation judges the model on runs at least this accurate
COST_TERMS = ("constant", "steps", "norm_steps", "macs", "activations")


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The training runs of a measurement (its reference-script rows left out)."""
    rows = []
    with path.open() as handle:
        for row in csv.DictReader(handle):
            if row["kind"] == "reference":
                continue
            params = {
                key: row[key] for key in row if key in TrainConfig.__dataclass_fields__ and key != "seed"
            }
            row["config"] = TrainConfig().replace(**params, seed=int(row["seed"]))
            for key in ("test_accuracy", "seconds", "train_seconds", "started_at"):
                row[key] = float(row[key])
            for key in ("accuracy", "holdout_accuracy"):  # the halves, where the file has them
                row[key] = float(row[key]) if row.get(key) else None
            row["diverged"] = row["diverged"] == "1"
            rows.append(row)
    return rows


def reference_seconds(path: Path) -> float:
    """The reference script's median seconds over the measurement: the machine's speed then."""
    with path.open() as handle:
        return statistics.median(float(row["seconds"]) for row in csv.DictReader(handle)
                                 if row["kind"] == "reference")


def config_key(config: TrainConfig) -> str:
    return json.dumps({k: v for k, v in config.to_dict().items() if k != "seed"}, sort_keys=True)


def robust_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, np.ndarray]:
    """Ridge regression, reweighted (Cauchy weights of scale ROBUST_SCALE) so that the few runs far
    off the landscape do not bend it where the search lives."""
    weights = np.ones(len(y))
    for _ in range(ROBUST_ROUNDS):
        root = np.sqrt(weights)
        intercept = float(np.sum(weights * y) / np.sum(weights))
        a = (x * root[:, None]).T @ (x * root[:, None]) + alpha * len(y) * np.eye(x.shape[1])
        beta = np.linalg.solve(a, (x * root[:, None]).T @ (root * (y - intercept)))
        weights = 1.0 / (1.0 + ((y - intercept - x @ beta) / ROBUST_SCALE) ** 2)
    return intercept, beta


def fit_accuracy(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    collapsed = [r for r in runs if r["test_accuracy"] < COLLAPSED]
    usable = [r for r in runs if not r["diverged"] and r["test_accuracy"] >= COLLAPSED]
    raw = np.array([features(r["config"]) for r in usable])
    means, scales = raw.mean(axis=0), raw.std(axis=0)
    scales[scales == 0] = 1.0
    x = (raw - means) / scales
    y = np.log(1.0 - np.array([r["test_accuracy"] for r in usable]))
    groups = [config_key(r["config"]) for r in usable]
    keys = sorted(set(groups))
    near_bar = np.array([r["test_accuracy"] >= NEAR_BAR for r in usable])
    cv: dict[float, float] = {}
    for alpha in ALPHAS:  # leave one config out; judged where the search lives, near the bar
        errors = np.zeros(len(y))
        for key in keys:
            out = np.array([g == key for g in groups])
            intercept, beta = robust_ridge(x[~out], y[~out], alpha)
            errors[out] = y[out] - intercept - x[out] @ beta
        cv[alpha] = float(np.sqrt(np.mean(errors[near_bar] ** 2)))
    alpha = min(cv, key=lambda a: cv[a])
    intercept, beta = robust_ridge(x, y, alpha)
    by_config: dict[str, list[float]] = defaultdict(list)
    for g, value in zip(groups, y, strict=True):
        by_config[g].append(float(value))
    within = [v - statistics.fmean(vs) for vs in by_config.values() if len(vs) > 1 for v in vs]
    dof = sum(len(vs) - 1 for vs in by_config.values() if len(vs) > 1)
    spread = math.sqrt(sum(d * d for d in within) / dof)
    collapse_lr = 0.9 * min((r["config"].lr for r in collapsed), default=1.0)
    exposed = [r for r in runs if r["config"].batch_norm == "none" and r["config"].lr >= collapse_lr]
    model = {"intercept": intercept, "coefficients": beta.tolist(), "means": means.tolist(),
             "scales": scales.tolist(), "spread": spread, "floor": float(0.8 * np.exp(y.min())),
             "collapse_lr": collapse_lr, "collapse_rate": len(collapsed) / max(1, len(exposed)),
             "collapse_accuracy": (statistics.median(r["test_accuracy"] for r in collapsed)
                                   if collapsed else 0.1)}
    residual = y - intercept - x @ beta
    recipe = np.array([r["kind"] == "recipe" for r in usable])
    report = {"runs": len(usable), "configs": len(keys), "collapsed": len(collapsed),
              "exposed_to_collapse": len(exposed), "alpha": alpha,
              "cv_rmse_log_error_near_bar": cv[alpha],
              "fit_rmse_log_error": float(np.sqrt(np.mean(residual**2))),
              "recipe_bias_log_error": float(np.mean(residual[recipe])),
              "per_seed_sigma_log_error": spread,
              "configs_on_several_seeds": sum(len(v) > 1 for v in by_config.values()),
              "coefficients": dict(zip(FEATURE_NAMES, [round(float(b), 4) for b in beta], strict=True))}
    return model, report


def fit_halves(runs: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    """How the selection half's accuracy differs from the held-out half's (the model in
    device.AccuracyModel): `d` = selection minus held-out = 2 shift + luck(config, selection half)
    - luck(config, held-out half) + 2 luck(config, seed). The shift is the mean of `d` / 2; the
    seed's luck, the spread of `d` within a config / 2; the config's on one half, what is left of
    the variance of the configs' mean `d` once their seeds' share is taken out, / 2, as a root."""
    usable = [r for r in runs if r["holdout_accuracy"] is not None and r["test_accuracy"] >= COLLAPSED]
    by_config: dict[str, list[float]] = defaultdict(list)
    for r in usable:
        by_config[config_key(r["config"])].append(r["accuracy"] - r["holdout_accuracy"])
    several = [ds for ds in by_config.values() if len(ds) > 1]
    within = (sum((d - statistics.fmean(ds)) ** 2 for ds in several for d in ds)
              / sum(len(ds) - 1 for ds in several))
    means = [statistics.fmean(ds) for ds in several]
    per_config = statistics.variance(means) - within * statistics.fmean(1 / len(ds) for ds in several)
    halves = {"half_shift": statistics.fmean(means) / 2,
              "half_config_sd": math.sqrt(max(0.0, per_config) / 2),
              "half_seed_sd": math.sqrt(within) / 2}
    recipe = [r for r in usable if r["kind"] == "recipe"]
    report = {"runs": len(usable), "configs": len(several),
              "recipe_seeds": len(recipe),
              "recipe_selection_minus_holdout_points": 100 * statistics.fmean(
                  r["accuracy"] - r["holdout_accuracy"] for r in recipe),
              "config_mean_d_variance": statistics.variance(means), "within_d_variance": within}
    return halves, report


def spikes(runs: list[dict[str, Any]]) -> list[bool]:
    """A run SPIKE x slower than the median of its kind's runs near it in time (or of its config's)."""
    flags = []
    recipe = [r for r in runs if r["kind"] == "recipe"]
    by_config: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        by_config[config_key(r["config"])].append(r["seconds"])
    for r in runs:
        if r["kind"] == "recipe":
            index = recipe.index(r)
            near = [o["seconds"] for o in recipe[max(0, index - 3) : index + 4] if o is not r]
            reference = statistics.median(near)
        else:
            others = [s for s in by_config[config_key(r["config"])] if s != r["seconds"]]
            reference = min(others) if others else r["seconds"]
        flags.append(r["seconds"] > SPIKE * reference)
    return flags


def fit_cpu(runs: list[dict[str, Any]], spiked: list[bool]) -> tuple[dict[str, float], dict[str, Any]]:
    kept = [
        r for r, s in zip(runs, spiked, strict=True) if not s and not r["diverged"] and r["over_time"] == "0"
    ]
    rows = [cost_features(r["config"]) for r in kept]
    a = np.array([[1.0, f["steps"], f["norm_steps"], f["macs"], f["activations"]] for f in rows])
    b = np.array([r["seconds"] for r in kept])
    weighted = a / b[:, None]  # relative errors: a fast config's 10 % counts as a slow one's
    scale = weighted.max(axis=0)
    solution, _ = nnls(weighted / scale, np.ones(len(b)))
    coef = solution / scale
    predicted = a @ coef
    errors = np.abs(predicted - b) / b
    recipe = [r["seconds"] for r in kept if r["kind"] == "recipe"]
    recipe_predicted = float(
        np.array([1.0, *[cost_features(TrainConfig())[k] for k in COST_TERMS[1:]]]) @ coef
    )
    profile = {
        "constant": float(coef[0]),
        "per_step": float(coef[1]),
        "per_norm_step": float(coef[2]),
        "macs_per_second": float(1 / coef[3]) if coef[3] > 0 else 1e30,
        "activations_per_second": float(1 / coef[4]) if coef[4] > 0 else 1e30,
    }
    report = {
        "runs": len(kept),
        "r2": float(1 - np.sum((predicted - b) ** 2) / np.sum((b - b.mean()) ** 2)),
        "median_abs_error": float(np.median(errors)),
        "p90_abs_error": float(np.quantile(errors, 0.9)),
        "recipe_measured_median": statistics.median(recipe),
        "recipe_predicted": recipe_predicted,
    }
    return profile, report


def fit_noise(runs: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    """The seed recipe's runs, spread over the session, as white noise plus a mean-reverting drift:
    their log seconds' autocovariance at lag k is spread^2 (k = 0 only) + drift^2 exp(-k gap / tau),
    fitted by least squares over lags 0..LAGS; spikes are runs more than SPIKE_SIGMAS spreads above
    the median of their neighbours."""
    recipe = [(r["started_at"], math.log(r["seconds"])) for r in runs if r["kind"] == "recipe"]
    logs = [value for _, value in recipe]
    centred = [value - statistics.fmean(logs) for value in logs]
    cov = [sum(a * b for a, b in zip(centred, centred[k:], strict=False)) / len(centred)
           for k in range(LAGS + 1)]
    gap = statistics.median(b[0] - a[0] for a, b in itertools.pairwise(recipe)) / 60
    best: tuple[float, float, float] | None = None
    for tau in np.geomspace(0.1, 60.0, 200):
        decay = np.exp(-np.arange(1, LAGS + 1) * gap / tau)
        drift2 = max(0.0, float(decay @ np.array(cov[1:]) / (decay @ decay)))
        residual = float(np.sum((np.array(cov[1:]) - drift2 * decay) ** 2))
        if best is None or residual < best[0]:
            best = (residual, tau, drift2)
    assert best is not None
    _, tau, drift2 = best
    spread = math.sqrt(max(0.0, cov[0] - drift2))
    neighbours = [statistics.median(logs[max(0, i - 3):i + 4]) for i in range(len(logs))]
    excess = [value - median for value, median in zip(logs, neighbours, strict=True)]
    spikes = [math.exp(e) - 1 for e in excess if e > SPIKE_SIGMAS * spread]
    noise = {"spread": spread, "drift": math.sqrt(drift2), "drift_minutes": float(tau),
             "spike_rate": len(spikes) / len(logs),
             "spike_size": statistics.median(spikes) if spikes else 0.0}
    report = {"recipe_runs": len(logs), "recipe_cv": math.sqrt(cov[0]),
              "autocovariance": [round(c, 5) for c in cov], "gap_minutes": gap, "spikes": len(spikes),
              "session_minutes": (recipe[-1][0] - recipe[0][0]) / 60,
              "recipe_seconds_min_median_max": [round(math.exp(f(logs)), 3)
                                                for f in (min, statistics.median, max)]}
    return noise, report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", default=str(RUNS_FILE))
    parser.add_argument("--halves", default=str(HALVES_FILE))
    parser.add_argument("--out", default=str(MODEL_FILE))
    args = parser.parse_args()
    runs = read_runs(Path(args.runs))
    spiked = spikes(runs)
    accuracy, accuracy_report = fit_accuracy(runs)
    cpu, cpu_report = fit_cpu(runs, spiked)
    noise, noise_report = fit_noise(runs)
    halves, halves_report = fit_halves(read_runs(Path(args.halves)))
    recipe = [r["test_accuracy"] for r in runs if r["kind"] == "recipe"]
    document = {
        "fitted_on": {
            "cpu": runs[0]["cpu"],
            "torch": runs[0]["torch"],
            "threads": int(runs[0]["threads"]),
            "bf16": runs[0]["bf16"] == "1",
            "runs": len(runs),
            "file": Path(args.runs).name,
            "date": datetime.date.today().isoformat(),
            "recipe_mean_accuracy": statistics.fmean(recipe),
            "recipe_seeds": len(recipe),
            "reference_seconds": reference_seconds(Path(args.runs)),
        },
        "accuracy": {**accuracy, **halves},
        "cpu": cpu,
        "noise": noise,
        "report": {"accuracy": accuracy_report, "halves": halves_report, "cpu": cpu_report,
                   "noise": noise_report},
    }
    Path(args.out).write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps(document["report"], indent=1))
    print(json.dumps({"cpu": cpu, "noise": noise}, indent=1))


if __name__ == "__main__":
    main()
