"""Search quality against a known truth: simulated searches, their winners judged by the simulator.

    python benchmarks/bench_regret.py [--workers 1,4,16] [--sampler-seeds 0-9] [--profile h100]
        [--history 200|none] [--minutes 14] [--objective KEY=VALUE] [--sampler KEY=VALUE]
        [--start KEY=VALUE,...] [--jobs 2] [--json FILE]

Each search is studies/mnist_fast.toml (trial ceiling lifted, [sampler] history as given) run by
N simulated workers of `--profile` for `--minutes` simulated minutes, fast-forward, in memory:
the real worker's loop, sampler, seed rules and crown guard on a virtual clock that keeps the
workers' interleaving (search/fleet.py); the same sampler seed sequence per N. Its winner is what
`python -m search.export` would pick (search/export.py: `choose`). The simulator knows every
config's noise-free seconds and mean accuracy (objective/sim/device.py), so:
- regret = the winner's true seconds / the true optimum's - 1, where the true optimum is the
  fastest config of the space whose true mean accuracy reaches the study's bar, found by a
  random search of the model followed by coordinate descent (`true_optimum`). The bar applies to
  the selection half of the test images, which is easier for every config by the model's
  `half_shift`, so on the true (10,000-image) scale it is the bar minus that shift (`true_bar`);
- the winner's true mean accuracy against 99.0 % and against the bar;
- selection - true accuracy: how much the seeds that crowned the winner flatter it, on the
  selection half of the test images (the winner's curse); claim - true: the same for what export
  reports, its claim seeds on the held-out half, and on all 10,000 images (objective/result.py);
  selection - claim: the optimism a user would see, what selection minus held-out measures;
- discarded: of the trials whose config is truly faster than the best crowned trial before them
  (trial order; exact for one worker) or the recipe, the share stopped as "clearly slower" after
  one run, and after any number of runs: what the clock's noise, spikes included, throws away.
`--jobs` runs that many searches at once (they share nothing; on a 2-core host, 2).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import math
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from objective.config import TrainConfig  # noqa: E402
from objective.sim.device import load_accuracy_model, load_profile  # noqa: E402
from studies.spec import load_spec  # noqa: E402

SPEC = ROOT / "studies" / "mnist_fast.toml"


def spec_copy(folder: Path, history: str, minutes: float, objective: list[str],
              sampler: list[str] | None = None, starts: list[str] | None = None) -> Path:
    text = SPEC.read_text().replace("n_trials = 1000", "n_trials = 100000000")
    text = text.replace("minutes = 14 ", f"minutes = {minutes:g} ")
    for assignment in objective:  # KEY=VALUE: that [objective] line of the spec, rewritten
        key, _, value = (part.strip() for part in assignment.partition("="))
        text, found = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", text)
        if not found:
            raise SystemExit(f"error: --objective {assignment}: the spec has no {key} line")
    lines = [line for line in text.splitlines() if not line.startswith("history")]
    text = "\n".join(lines) + "\n"
    if history != "none":
        text = text.replace('name = "tpe"', f'name = "tpe"\nhistory = {int(history)}', 1)
    for assignment in sampler or []:  # KEY=VALUE: an option of the [sampler] (TOML value)
        text = text.replace('name = "tpe"', f'name = "tpe"\n{assignment}', 1)
    for start in starts or []:  # KEY=VALUE,KEY=VALUE: one more [[start]] table (TOML values)
        text = text.replace("\n[params.", "\n[[start]]\n" + start.replace(",", "\n") + "\n\n[params.", 1)
    path = folder / f"spec-{history}-{minutes:g}.toml"
    path.write_text(text)
    return path


def _draw(dist: Any, rng: random.Random) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return rng.choice(dist.choices)
    if isinstance(dist, IntDistribution):
        if dist.log:
            return round(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
        return rng.randrange(dist.low, dist.high + 1, dist.step)
    assert isinstance(dist, FloatDistribution)
    if dist.log:
        return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
    return rng.uniform(dist.low, dist.high)


def _grid(dist: Any, value: Any) -> list[Any]:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        return list(range(dist.low, dist.high + 1, dist.step))
    if dist.log:
        return [min(dist.high, max(dist.low, value * f)) for f in (0.8, 0.9, 0.95, 1.05, 1.1, 1.25)]
    span = dist.high - dist.low
    return [min(dist.high, max(dist.low, value + f * span)) for f in (-0.1, -0.03, -0.01, 0.01, 0.03, 0.1)]


def true_bar(required_accuracy: float) -> float:
    """The study's bar, on the selection half, as a true mean accuracy (module docstring)."""
    return required_accuracy - load_accuracy_model().half_shift


def true_optimum(profile_name: str, samples: int = 60000, seed: int = 0) -> tuple[TrainConfig, float, float]:
    """The fastest config whose true mean accuracy reaches the bar: (config, seconds, accuracy)."""
    spec = load_spec(SPEC)
    bar = true_bar(spec.objective.required_accuracy)
    profile, model = load_profile(profile_name), load_accuracy_model()
    rng = random.Random(seed)

    def score(params: dict[str, Any]) -> tuple[float, TrainConfig] | None:
        try:
            config = spec.base.replace(**params)
        except Exception:
            return None
        if model.true_accuracy(config) < bar:
            return None
        return profile.true_seconds(config), config

    found = []
    for _ in range(samples):
        params = {name: _draw(dist, rng) for name, dist in spec.space.items()}
        if (scored := score(params)) is not None:
            found.append((scored[0], params))
    found.sort(key=lambda item: item[0])
    best: tuple[float, dict[str, Any]] | None = None
    for seconds, params in found[:20]:
        improved = True
        while improved:
            improved = False
            for name, dist in spec.space.items():
                for value in _grid(dist, params[name]):
                    candidate = {**params, name: value}
                    scored = score(candidate)
                    if scored is not None and scored[0] < seconds - 1e-9:
                        seconds, params, improved = scored[0], candidate, True
        if best is None or seconds < best[0]:
            best = (seconds, params)
    assert best is not None, "no config of the space reaches the bar in the model"
    config = spec.base.replace(**best[1])
    return config, best[0], model.true_accuracy(config)


def one_search(spec_path: str, profile: str, workers: int, sampler_seed: int) -> dict[str, Any]:
    """One fast-forward search in memory; the winner export would pick, judged by the truth."""
    import optuna

    from search import session as worker_session
    from search import worker as search_worker
    from search.clock import VirtualClock
    from search.export import ExportError, choose
    from search.fleet import run_on_virtual_clock
    from search.signals import GracefulStop

    worker_session.quiet_optuna()
    logging.getLogger("search").setLevel(logging.WARNING)
    args = search_worker.parser().parse_args(
        [
            "--spec",
            spec_path,
            "--simulate",
            profile,
            "--fast-forward",
            "--workers",
            str(workers),
            "--sampler-seed",
            str(sampler_seed),
            "--no-progress",
        ]
    )
    storage = optuna.storages.InMemoryStorage()
    clock, stop = VirtualClock(), GracefulStop()
    started = time.perf_counter()
    run_on_virtual_clock(
        workers,
        clock,
        lambda index: worker_session.search(
            worker_session.open_worker(args, stop, clock, storage, index), args, stop
        ),
    )
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name="mnist_fast", storage=storage)
    trials = study.get_trials(deepcopy=False)
    row: dict[str, Any] = {
        "workers": workers,
        "sampler_seed": sampler_seed,
        "trials": len(trials),
        "wall_s": wall,
        "simulated_s": clock.monotonic(),
    }
    try:
        choice = choose(trials)
    except ExportError as error:
        return {**row, "winner": None, "why": str(error)}
    spec = load_spec(spec_path)
    row.update(discards(trials, profile))
    attrs = choice.trial.user_attrs
    config = TrainConfig().replace(**attrs["config"])
    model, device = load_accuracy_model(), load_profile(profile)
    return {
        **row,
        "winner": choice.trial.number,
        "config": config.to_dict(),
        "seeds": len(choice.trial.user_attrs.get("accuracies", [])),
        "stopped": choice.trial.user_attrs.get("stopped"),
        # what export claims (the claim seeds, where the spec runs them), and what selected it
        "reported_accuracy": attrs.get("claim_accuracy", attrs["accuracy"]),
        "reported_test_accuracy": attrs.get("claim_test_accuracy", attrs["accuracy"]),
        "reported_seconds": attrs.get("claim_seconds", attrs["seconds"]),
        "selection_accuracy": attrs["accuracy"],
        "true_accuracy": model.true_accuracy(config),
        "true_seconds": device.true_seconds(config),
        "bar": true_bar(spec.objective.required_accuracy),
    }


def discards(trials: list[Any], profile: str) -> dict[str, int]:
    """How many trials were truly faster than the best crowned trial before them, and how many of
    those one run threw away as clearly slower, or any number of runs (module docstring)."""
    device = load_profile(profile)
    best_value, best_true = math.inf, device.true_seconds(TrainConfig())
    faster = discarded = slower = 0
    for trial in sorted(trials, key=lambda t: t.number):
        if "config" not in trial.user_attrs or "stopped" not in trial.user_attrs:
            continue
        true = device.true_seconds(TrainConfig().replace(**trial.user_attrs["config"]))
        if true < best_true:
            faster += 1
            discarded += trial.user_attrs["stopped"].startswith("clearly slower after 1 seed")
            slower += trial.user_attrs["stopped"].startswith("clearly slower")
        if trial.user_attrs.get("crowned") and trial.value is not None and trial.value < best_value:
            best_value, best_true = trial.value, true
    return {"truly_faster": faster, "discarded_after_one_run": discarded, "discarded_as_slower": slower}


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,4,16")
    parser.add_argument("--sampler-seeds", default="0-9")
    parser.add_argument("--profile", default="h100")
    parser.add_argument("--history", default="200", help="[sampler] history, or none for TPE's whole one")
    parser.add_argument("--minutes", type=float, default=14.0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--objective", action="append", default=[], metavar="KEY=VALUE",
                        help="rewrite one [objective] line of the spec; repeatable")
    parser.add_argument("--sampler", action="append", default=[], metavar="KEY=VALUE",
                        help="add one option to the spec's [sampler] (a TOML value); repeatable")
    parser.add_argument("--start", action="append", default=[], metavar="KEY=VALUE,...",
                        help="add one [[start]] point to the spec; repeatable")
    parser.add_argument("--json", help="write every search's row here")
    args = parser.parse_args()
    optimum, optimum_seconds, optimum_accuracy = true_optimum(args.profile)
    print(
        f"{time.strftime('%Y-%m-%d')}, simulated {args.profile}, {args.minutes:g} simulated minutes, "
        f"[sampler] history {args.history} {' '.join(args.sampler)}, "
        f"[objective] {' '.join(args.objective) or 'as the spec'}, start points added: {args.start}; "
        f"true optimum {optimum_seconds:.4f} s at "
        f"{100 * optimum_accuracy:.3f} % (the bar, true: "
        f"{100 * true_bar(load_spec(SPEC).objective.required_accuracy):.3f} %; the recipe: "
        f"{load_profile(args.profile).true_seconds(TrainConfig()):.4f} s, "
        f"{100 * load_accuracy_model().true_accuracy(TrainConfig()):.3f} %)",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        spec_path = str(spec_copy(Path(scratch), args.history, args.minutes, args.objective, args.sampler,
                                     args.start))
        jobs = [
            (workers, seed)
            for workers in map(int, args.workers.split(","))
            for seed in parse_seeds(args.sampler_seeds)
        ]
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {pool.submit(one_search, spec_path, args.profile, w, s): (w, s) for w, s in jobs}
            for future in concurrent.futures.as_completed(futures):
                row = future.result()
                row["regret"] = (
                    (row["true_seconds"] / optimum_seconds - 1) if row.get("winner") is not None else None
                )
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    print(
        "\n| workers | searches | trials (median) | median regret | regret range | winners >= 99.0 % "
        "(true) | >= bar (true) | selection - true accuracy, mean (points) | claim (held-out) - true | "
        "claim (all images) - true | selection - claim (held-out) | "
        "truly faster discarded after one run | ... after any | wall s per search |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for workers in map(int, args.workers.split(",")):
        group = [r for r in rows if r["workers"] == workers]
        won = [r for r in group if r.get("winner") is not None]
        regrets = [r["regret"] for r in won]
        print(
            f"| {workers} | {len(group)} | {statistics.median(r['trials'] for r in group):.0f} | "
            f"{100 * statistics.median(regrets):.1f} % | "
            f"{100 * min(regrets):.1f} to {100 * max(regrets):.1f} % | "
            f"{sum(r['true_accuracy'] >= 0.99 for r in won)}/{len(group)} | "
            f"{sum(r['true_accuracy'] >= r['bar'] for r in won)}/{len(group)} | "
            f"{100 * statistics.fmean(r['selection_accuracy'] - r['true_accuracy'] for r in won):+.3f} | "
            f"{100 * statistics.fmean(r['reported_accuracy'] - r['true_accuracy'] for r in won):+.3f} | "
            f"{100 * statistics.fmean(r['reported_test_accuracy'] - r['true_accuracy'] for r in won):+.3f} | "
            f"{100 * statistics.fmean(r['selection_accuracy'] - r['reported_accuracy'] for r in won):+.3f} | "
            f"{sum(r['discarded_after_one_run'] for r in won)}/{sum(r['truly_faster'] for r in won)} | "
            f"{sum(r['discarded_as_slower'] for r in won)} | "
            f"{statistics.median(r['wall_s'] for r in group):.0f} |"
            if won
            else f"| {workers} | {len(group)} | - | no winner | - | 0/{len(group)} |" + " - |" * 8
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"optimum": optimum.to_dict(), "optimum_seconds": optimum_seconds, "rows": rows}, indent=1
            )
        )


if __name__ == "__main__":
    main()
