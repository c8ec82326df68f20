"""Every device row the docs need, in one command, so a borrowed GPU is spent measuring.

    python benchmarks/device_suite.py --device cuda --out DIR [--quick] [--data-dir ../shared/mnist]

In this order, each in a process of its own, on one device, and written to DIR/device_suite.json
and DIR/device_suite.md (one table) as it goes:
1. the reference script (../shared/reference/seed_recipe.py) on the seed recipe;
2. `python -m objective.train` on the seed recipe with the default speed knobs, then with each
   knob turned the other way (channels_last, bf16 autocast on and off), same seeds;
3. the simulator's prediction for the recipe on the matching profile (objective/sim/), beside (2);
4. a short search: `python -m search.worker` with the device's defaults (prefetch on a GPU) on
   studies/mnist_fast.toml for --search-minutes, on a fresh SQLite file: its duty cycle (the
   trials' timed seconds over the searching wall time the worker reports) and the service's time
   per trial (the rest, over the trials);
5. its winner (`python -m search.export --verify`) retrained on fresh seeds.
The full run fits in 8 minutes on a GPU (10 seeds a row, a 3-minute search, 10 verification
seeds). --quick is the same suite in under 2 minutes on a CPU, for CI: one seed a row, the
smoke study searched for 15 s, 2 verification seeds; its figures check the suite, not the device.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reference import time_reference  # noqa: E402

KNOBS = {
    "channels_last off": ["--set", "channels_last=false"],
    "bf16 autocast on": ["--set", "bf16_autocast=on"],
    "bf16 autocast off": ["--set", "bf16_autocast=off"],
    "cuda_graphs on": ["--set", "cuda_graphs=true"],
}
RAN = re.compile(r"this worker ran (\d+) trial\(s\) in ([\d.]+) s")


def run(command: list[str], timeout: float) -> str:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise SystemExit(
            f"error: {' '.join(command[:5])} ... exited {done.returncode}: {done.stderr.strip()[-600:]}"
        )
    return done.stdout


def last_json(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])


def training_rows(args: argparse.Namespace, seeds: str) -> list[dict[str, Any]]:
    rows = []
    reference = time_reference(args.data_dir, seeds, args.device.split(":")[0])
    rows.append(
        {
            "row": "reference script",
            "median_seconds": reference["median_seconds"],
            "mean_accuracy": reference["mean_accuracy"],
            "seeds": seeds,
        }
    )
    variants = {"objective.train, defaults": [], **KNOBS}
    for name, extra in variants.items():
        measured = last_json(
            run(
                [
                    sys.executable,
                    "-m",
                    "objective.train",
                    "--data-dir",
                    args.data_dir,
                    "--seeds",
                    seeds,
                    "--device",
                    args.device,
                    "--json",
                    *extra,
                ],
                timeout=600,
            )
        )
        rows.append(
            {
                "row": name,
                "median_seconds": measured["median_seconds"],
                "mean_accuracy": measured["mean_accuracy"],
                "seeds": seeds,
                "device": measured["fingerprint"]["device"],
                "bf16": measured["fingerprint"].get("bf16_autocast"),
            }
        )
    for row in rows:
        row["vs_reference"] = row["median_seconds"] / rows[0]["median_seconds"]
    return rows


def simulator_row(device_name: str, measured: dict[str, Any]) -> dict[str, Any]:
    from objective.config import TrainConfig
    from objective.sim.device import load_accuracy_model, load_profile

    name = device_name.lower().replace("h200", "h100")  # one chip, the H200 with more memory
    profile = next((p for p in ("h100", "a100", "l4") if p in name), "cpu")
    predicted = load_profile(profile).true_seconds(TrainConfig())
    return {
        "row": f"simulated {profile} (objective/sim/), the recipe",
        "median_seconds": predicted,
        "mean_accuracy": load_accuracy_model().true_accuracy(TrainConfig()),
        "vs_measured": predicted / measured["median_seconds"],
    }


def search_row(args: argparse.Namespace, out: Path, quick: bool) -> tuple[dict[str, Any], str, str]:
    url = f"sqlite:///{out / 'suite.db'}"
    if quick:
        spec, name, limit = ROOT / "studies" / "smoke.toml", "smoke", ["--timeout", "15"]
    else:
        text = (ROOT / "studies" / "mnist_fast.toml").read_text()
        spec = out / "mnist_fast_suite.toml"
        spec.write_text(
            text.replace("minutes = 14 ", f"minutes = {args.search_minutes:g} ").replace(
                "n_trials = 1000", "n_trials = 1000000"
            )
        )
        name, limit = "mnist_fast", []
    stdout = run(
        [
            sys.executable,
            "-m",
            "search.worker",
            "--spec",
            str(spec),
            "--storage",
            url,
            "--device",
            args.device,
            "--data-dir",
            args.data_dir,
            "--sampler-seed",
            "0",
            "--no-progress",
            *limit,
        ],
        timeout=60 * args.search_minutes + 300,
    )
    found = RAN.search(stdout)
    assert found is not None, stdout[-500:]
    trials, wall = int(found.group(1)), float(found.group(2))
    study = optuna.load_study(study_name=name, storage=url)
    timed = sum(sum(t.user_attrs.get("seconds_per_seed", [])) for t in study.get_trials())
    median_trial = statistics.median(
        t.user_attrs["seconds"] for t in study.get_trials() if "seconds" in t.user_attrs
    )
    row = {
        "row": f"search ({name}, {'15 s' if quick else f'{args.search_minutes:g} min'}, device defaults)",
        "trials": trials,
        "wall_seconds": wall,
        "timed_seconds": timed,
        "duty": timed / wall,
        "service_ms_per_trial": 1000 * (wall - timed) / trials,
        "median_trial_seconds": median_trial,
    }
    return row, url, name


def verify_row(url: str, study: str, args: argparse.Namespace, out: Path, seeds: int) -> dict[str, Any]:
    best = out / "best.json"
    run(
        [
            sys.executable,
            "-m",
            "search.export",
            "--storage",
            url,
            "--study",
            study,
            "--out",
            str(best),
            "--verify",
            str(seeds),
            "--device",
            args.device,
            "--data-dir",
            args.data_dir,
        ],
        timeout=900,
    )
    document = json.loads(best.read_text())
    verification = document["verification"]
    return {
        "row": f"winner, trial {document['trial']}, on fresh seeds",
        "median_seconds": verification["median_seconds"],
        "mean_accuracy": verification["mean_accuracy"],
        "pass_rate": verification["pass_rate"],
        "seeds": f"{verification['seeds'][0]}..{verification['seeds'][-1]}",
        "study_accuracy": document["metrics"]["accuracy"],
        "study_seconds": document["metrics"]["seconds"],
        "config": document["config"],
    }


def markdown(suite: dict[str, Any]) -> str:
    lines = [
        f"Device suite, {suite['date']}, device {suite['device_name']} (`--device {suite['device']}`"
        f"{', --quick' if suite['quick'] else ''}), torch {suite['torch']}; command: `{suite['command']}`",
        "",
        "| row | median s | vs reference | mean accuracy | notes |",
        "|---|---|---|---|---|",
    ]
    for row in suite["rows"]:
        if "duty" in row:
            lines.append(
                f"| {row['row']} | {row['median_trial_seconds']:.3f} (a trial) | | | {row['trials']} trials; "
                f"duty {100 * row['duty']:.1f} %; service {row['service_ms_per_trial']:.1f} ms a trial |"
            )
            continue
        notes = []
        if "vs_measured" in row:
            notes.append(f"{row['vs_measured']:.2f}x what objective.train measured")
        if "pass_rate" in row:
            notes.append(
                f"pass rate {row['pass_rate']:.2f}; the study said {100 * row['study_accuracy']:.3f} % in "
                f"{row['study_seconds']:.3f} s"
            )
        if row.get("seeds"):
            notes.append(f"seeds {row['seeds']}")
        ratio = f"{row['vs_reference']:.2f}x" if "vs_reference" in row else ""
        lines.append(
            f"| {row['row']} | {row['median_seconds']:.3f} | {ratio} | {100 * row['mean_accuracy']:.3f} % | "
            f"{'; '.join(notes)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", required=True, help="cpu, cuda or cuda:N")
    parser.add_argument("--out", required=True, help="folder for device_suite.json and device_suite.md")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "mnist"))
    parser.add_argument("--search-minutes", type=float, default=3.0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("suite.db", "suite.db-wal", "suite.db-shm"):
        (out / stale).unlink(missing_ok=True)
    started = time.monotonic()
    suite: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": args.device,
        "quick": args.quick,
        "command": " ".join(["python", *sys.argv]),
        "rows": [],
    }

    def save() -> None:
        suite["seconds"] = time.monotonic() - started
        (out / "device_suite.json").write_text(json.dumps(suite, indent=1) + "\n")
        (out / "device_suite.md").write_text(markdown(suite))

    seeds = "0" if args.quick else ",".join(map(str, range(10)))
    training = training_rows(args, seeds)
    suite.update(device_name=training[1]["device"], torch=_torch_version())
    suite["rows"] += training
    suite["rows"].append(simulator_row(training[1]["device"], training[1]))
    save()
    search, url, study = search_row(args, out, args.quick)
    suite["rows"].append(search)
    save()
    suite["rows"].append(verify_row(url, study, args, out, 2 if args.quick else 10))
    save()
    print(markdown(suite))
    print(f"{suite['seconds']:.0f} s in all; {out / 'device_suite.json'}")


def _torch_version() -> str:
    return run([sys.executable, "-c", "import torch; print(torch.__version__)"], timeout=120).strip()


if __name__ == "__main__":
    main()
