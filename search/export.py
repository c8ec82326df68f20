"""`python -m search.export`: write a study's best config as a document that reproduces it.

    python -m search.export --storage sqlite:///optuna.db --study mnist_fast --out best.json
        [--format json|yaml|toml] [--fingerprint DEVICE_NAME] [--verify N [--device auto|cpu|cuda]
        [--data-dir DIR] [--threads N]]

Best = the lowest value (time over the recipe's on the same device) among the crowned trials
(COMPLETE, feasible, and held the crown guard: objective/seeds.py) on one hardware fingerprint:
the most common one, or the device named by --fingerprint (seconds measured on different machines
do not compare). The seed-recipe baseline is eligible. The document holds the whole `config` (what
`python -m objective.train --config best.json` takes), the trial's metrics, its fingerprint,
provenance (storage kind, Optuna version, time, spec), how it was picked, and `per_fingerprint`:
the best crowned trial on every fingerprint that has one.
--verify N retrains the config on N fresh seeds here and adds a `verification` block.
The format follows --format, else the --out suffix (.json, .yaml/.yml, .toml), else JSON;
`--out -` writes to stdout. The study is only read, never written.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from objective import attributes
from objective.cli import OneLineParser
from objective.config import ConfigError, TrainConfig, from_dict
from objective.errors import UserError
from objective.optuna_objective import ACCURACY_TARGET, is_crowned_trial
from objective.result import describe_fingerprint
from search.devices import open_real
from search.retry import storage_failure
from studies.spec import validate_study_name
from studies.storage import load_existing, mask, parse_url, resolve_url

FORMATS = ("json", "yaml", "toml")
SUFFIX_FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}
VERIFY_FIRST_SEED = 1000  # verification seeds start here, away from the seeds a search uses


class ExportError(UserError):
    """Nothing (or nothing sensible) can be exported; the message is one line for the user."""


# -- the command line ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m search.export", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--storage", help="storage URL (default: $OPTUNA_STORAGE or sqlite:///optuna.db)")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--out", default="best.json", help="output file, or - for stdout (default: best.json)")
    p.add_argument("--format", help="json, yaml or toml (default: from the --out suffix, else json)")
    p.add_argument("--fingerprint", metavar="DEVICE_NAME",
                   help="pick within the trials that ran on this device (default: the most common)")
    p.add_argument("--verify", type=int, metavar="N", help="retrain the config on N fresh seeds here")
    p.add_argument("--device", default="auto", help="device for --verify: auto, cpu, cuda or cuda:N")
    p.add_argument("--data-dir", help="MNIST root for --verify (default: $MNIST_DATA or ~/.cache/fast-mnist)")
    p.add_argument("--threads", type=int, help="CPU threads for torch during --verify")
    return p


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = resolve_url(args.storage)
    try:
        return run(args, url)
    except UserError as error:
        say(f"error: {error}")
    except sqlalchemy.exc.SQLAlchemyError as error:
        say(f"error: cannot read {mask(url)}: {storage_failure(error)}")
    return 2


def run(args: argparse.Namespace, url: str) -> int:
    # Everything that can be checked cheaply is checked before a long --verify.
    validate_study_name(args.study)
    if args.verify is not None and args.verify < 1:
        raise ExportError(f"--verify must be >= 1 (seeds to retrain), got {args.verify}")
    if args.threads is not None and args.threads < 1:
        raise ExportError(f"--threads must be >= 1, got {args.threads}")
    fmt = format_for(args.out, args.format)
    to_stdout = args.out == "-"
    if not to_stdout:
        check_writable(Path(args.out))

    study = load_existing(url, args.study)  # never creates a database, tables or a study
    choice = choose(study.get_trials(deepcopy=False), device=args.fingerprint)
    say(f"selected {choice.selection}")
    document = build_document(study, choice, url)
    if args.verify is not None:
        document["verification"] = run_verification(args, study, choice)

    text = render(document, fmt)
    if to_stdout:
        sys.stdout.write(text)
    else:
        write_atomic(Path(args.out), text)
        say(f"wrote {args.out} ({fmt}): trial {choice.trial.number} of study {study.study_name}")
    return 0


def run_verification(args: argparse.Namespace, study: optuna.Study, choice: Choice) -> dict[str, Any]:
    trial = choice.trial
    config = trial_config(trial, study.user_attrs)
    target = accuracy_target(study.user_attrs)
    attrs = trial.user_attrs
    used = len(attrs.get(attributes.ACCURACIES) or [None]) + len(attrs.get(attributes.CLAIM_ACCURACIES) or [])
    seeds = verification_seeds(config, args.verify, used=used)
    # Verification is timed like a trial: in a training process, on a device claimed as a worker
    # claims it, waiting while another holds it.
    device = open_real(args.device, args.threads, args.data_dir, shared=False, wait=True,
                       keep_waiting=lambda: True, on_wait=say)
    say(f"verifying trial {trial.number} on {device.name} with seeds {seeds[0]}..{seeds[-1]} "
        f"(target {100 * target:.2f} %)")
    try:
        block = verify(config, seeds, target, run=lambda c: device.run(c, math.inf), progress=say)
    finally:
        device.close()
    if block["fingerprint"] != choice.fingerprint:
        say(f"note: verified on {describe_fingerprint(block['fingerprint'])}, not on the trial's "
            f"{describe_fingerprint(choice.fingerprint)}: compare the seconds with care")
    say(f"verification: pass rate {block['pass_rate']:.2f}, mean accuracy "
        f"{100 * block['mean_accuracy']:.2f} %, median {block['median_seconds']:.3f} s")
    return block


# -- choosing the trial -------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The trial picked, the fingerprint it was picked within, and how, in words."""

    trial: FrozenTrial
    fingerprint: dict[str, Any]
    selection: str


def fingerprint_of(trial: FrozenTrial) -> dict[str, Any]:
    value = trial.user_attrs.get(attributes.FINGERPRINT)
    return dict(value) if isinstance(value, Mapping) else {}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def fingerprint_groups(trials: Iterable[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    """The COMPLETE trials by fingerprint, in the order the fingerprints first appear."""
    groups: dict[str, list[FrozenTrial]] = {}
    for trial in trials:
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            groups.setdefault(json.dumps(fingerprint_of(trial), sort_keys=True), []).append(trial)
    return groups


def best_crowned(members: Iterable[FrozenTrial]) -> FrozenTrial | None:
    crowned = [t for t in members if is_crowned_trial(t)]
    return min(crowned, key=lambda t: (t.value, t.number)) if crowned else None


def choose(trials: Iterable[FrozenTrial], device: str | None = None) -> Choice:
    """The best crowned trial within one fingerprint (see the module docstring)."""
    groups = fingerprint_groups(trials)
    if not groups:
        raise ExportError("no crowned trial: the study has no COMPLETE trial yet")
    complete = sum(len(members) for members in groups.values())
    counts = Counter({key: len(members) for key, members in groups.items()})
    ranked = sorted(groups, key=lambda key: -counts[key])  # stable: ties keep first appearance
    if device is None:
        key = ranked[0]
        how = (f"the most common of {_plural(len(groups), 'fingerprint')}" if len(groups) > 1
               else "the only fingerprint")
    else:
        key = _match_device(groups, ranked, device)
        how = f"chosen by --fingerprint {device!r} among {_plural(len(groups), 'fingerprint')}"
    fingerprint = fingerprint_of(groups[key][0])  # as recorded, in its own key order
    best = best_crowned(groups[key])
    if best is None:
        others = [describe_fingerprint(fingerprint_of(groups[k][0])) for k in ranked
                  if k != key and best_crowned(groups[k]) is not None]
        hint = (f"; fingerprints with crowned trials: {'; '.join(others)} (pick one with --fingerprint)"
                if others else "")
        raise ExportError(f"no crowned trial: none of the {_plural(len(groups[key]), 'complete trial')} "
                          f"on {describe_fingerprint(fingerprint)} held the bar and beat the recipe "
                          f"over the crown guard's seeds{hint}")
    crowned = sum(is_crowned_trial(t) for t in groups[key])
    baseline = " (the seed-recipe baseline)" if best.user_attrs.get(attributes.BASELINE) else ""
    selection = (f"trial {best.number}{baseline}: lowest value ({best.value:.4f}) among "
                 f"{_plural(crowned, 'crowned trial')} of "
                 f"{_plural(len(groups[key]), 'complete trial')} "
                 f"on fingerprint {describe_fingerprint(fingerprint)}, {how}; "
                 f"{_plural(complete, 'complete trial')} in the study")
    return Choice(trial=best, fingerprint=fingerprint, selection=selection)


def per_fingerprint(trials: Iterable[FrozenTrial]) -> list[dict[str, Any]]:
    """The best crowned trial on each fingerprint that has one: what a mixed fleet found."""
    rows = []
    for members in fingerprint_groups(trials).values():
        best = best_crowned(members)
        if best is not None:
            row = {"fingerprint": describe_fingerprint(fingerprint_of(best)), "trial": best.number,
                   "seconds": best.user_attrs.get(attributes.SECONDS),
                   "accuracy": best.user_attrs.get(attributes.ACCURACY), "value": best.value}
            # the claim, as the document's metrics give it: seeds that did not select the trial
            row.update({key: best.user_attrs[key] for key in attributes.CLAIM
                        if key in best.user_attrs})
            rows.append(row)
    return rows


def _match_device(groups: Mapping[str, list[FrozenTrial]], ranked: list[str], device: str) -> str:
    """The most common fingerprint whose device is `device` (exact, else a unique substring),
    ignoring case."""
    names = {key: str(fingerprint_of(members[0]).get("device", "(no fingerprint)"))
             for key, members in groups.items()}
    wanted = device.strip().lower()
    matches = [key for key in ranked if names[key].lower() == wanted]
    if not matches:
        matches = [key for key in ranked if wanted and wanted in names[key].lower()]
        if len({names[key] for key in matches}) > 1:
            found = "; ".join(sorted({names[key] for key in matches}))
            raise ExportError(f"--fingerprint {device!r} matches several devices: {found}; "
                              "give the full device name")
    if not matches:
        known = "; ".join(sorted(set(names.values())))
        raise ExportError(f"no complete trial ran on a device matching --fingerprint {device!r}; "
                          f"devices in the study: {known}")
    return matches[0]


# -- the document -------------------------------------------------------------------------------


def accuracy_target(study_attrs: Mapping[str, Any]) -> float:
    """The target the study recorded, else the objective's default."""
    return float(study_attrs.get(attributes.STUDY_ACCURACY_TARGET, ACCURACY_TARGET))


def trial_config(trial: FrozenTrial, study_attrs: Mapping[str, Any]) -> TrainConfig:
    """The whole config the trial trained: its `config` attribute, else the study's base config
    with the trial's params over it."""
    try:
        recorded = trial.user_attrs.get(attributes.CONFIG)
        if isinstance(recorded, Mapping):
            return from_dict(dict(recorded))
        base = study_attrs.get(attributes.STUDY_BASE_CONFIG)
        if isinstance(base, Mapping):
            return from_dict({**base, **trial.params})
    except ConfigError as error:
        raise ExportError(f"trial {trial.number} has a config that cannot train: {error}") from None
    raise ExportError(f"trial {trial.number} records no config (no `config` trial attribute and no "
                      "`base_config` study attribute)")


def build_document(study: optuna.Study, choice: Choice, url: str) -> dict[str, Any]:
    trial = choice.trial
    attrs = study.user_attrs
    metrics: dict[str, Any] = {
        "accuracy": trial.user_attrs.get(attributes.ACCURACY),
        "seconds": trial.user_attrs.get(attributes.SECONDS),
        "train_seconds": trial.user_attrs.get(attributes.TRAIN_SECONDS),
        "value": trial.value,
        "accuracy_target": accuracy_target(attrs),
    }
    # per seed; seconds over the seed recipe's here; the claim: seeds that decided nothing
    for key in (attributes.ACCURACIES, attributes.VS_BASELINE, *attributes.CLAIM,
                attributes.CLAIM_ACCURACIES):
        if key in trial.user_attrs:
            metrics[key] = trial.user_attrs[key]
    return {
        "config": trial_config(trial, attrs).to_dict(),
        "metrics": metrics,
        "trial": trial.number,
        "baseline": bool(trial.user_attrs.get(attributes.BASELINE, False)),
        "study": study.study_name,
        "provenance": {
            "storage": parse_url(url).get_backend_name(),  # the database kind: never host or user
            "optuna": optuna.__version__,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "spec": attrs.get(attributes.STUDY_SPEC),
        },
        "fingerprint": choice.fingerprint,
        "selection": choice.selection,
        "per_fingerprint": per_fingerprint(study.get_trials(deepcopy=False)),
    }


# -- verification -------------------------------------------------------------------------------


def verification_seeds(config: TrainConfig, count: int, used: int = 1) -> list[int]:
    """`count` seeds the search did not train with: it used config.seed .. config.seed + used - 1."""
    first = max(VERIFY_FIRST_SEED, config.seed + used)
    return list(range(first, first + count))


def verify(config: TrainConfig, seeds: list[int], target: float,
           run: Callable[[TrainConfig], Any],
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Retrain `config` once per seed with `run` (returns an objective.timed_run.RunResult) and
    summarize on all 10,000 test images, as the seed recipe's figure is (pass_rate: the fraction of
    seeds that reach `target`), and on the held-out half alone."""
    if not seeds:
        raise ExportError("verification needs at least one seed")
    runs = []
    for seed in seeds:
        result = run(config.replace(seed=seed))
        runs.append(result)
        if progress is not None:
            flag = " (diverged)" if result.diverged else ""
            progress(f"verify seed {seed}: {result.seconds:.3f} s, "
                     f"accuracy {100 * result.test_accuracy:.2f} %{flag}")
    accuracies = [r.test_accuracy for r in runs]
    passed = sum(1 for r in runs if r.test_accuracy >= target and not r.diverged)
    return {
        "seeds": list(seeds),
        "target": target,
        "pass_rate": passed / len(runs),
        "mean_accuracy": statistics.fmean(accuracies),
        "std_accuracy": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "mean_holdout_accuracy": statistics.fmean(r.holdout_accuracy for r in runs),
        "median_seconds": statistics.median(r.seconds for r in runs),
        "runs": [{key: value for key, value in r.to_dict().items() if key != "fingerprint"}
                 for r in runs],
        "fingerprint": dict(runs[0].fingerprint),
    }


# -- writing ------------------------------------------------------------------------------------


def format_for(out: str, requested: str | None) -> str:
    """--format if given, else from the --out suffix (.json, .yaml/.yml, .toml), else JSON."""
    if requested is not None:
        fmt = requested.strip().lower()
        if fmt not in FORMATS:
            raise ExportError(f"unknown --format {requested!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    return SUFFIX_FORMATS.get(Path(out).suffix.lower(), "json")


def _without_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        return [_without_none(item) for item in value if item is not None]
    return value


def render(document: Mapping[str, Any], fmt: str) -> str:
    """The document as text. TOML cannot hold null, so None values are left out there."""
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True)
    if fmt == "toml":
        import tomli_w

        return tomli_w.dumps(_without_none(dict(document)))
    raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def check_writable(out: Path) -> None:
    """Fail now, not after a long verification (or a report's rendering), when `out` cannot be written."""
    if out.is_dir():
        raise ExportError(f"cannot write {out}: it is a directory")
    parent = out.parent
    if not parent.is_dir():
        raise ExportError(f"cannot write {out}: directory {parent} does not exist")
    probe = parent / f".{out.name}.{secrets.token_hex(4)}.probe"
    try:
        probe.open("x").close()  # a real write: os.access says yes to root on a read-only mount
    except OSError as error:
        raise ExportError(f"cannot write {out}: {error.strerror or error}") from None
    probe.unlink(missing_ok=True)
    if out.exists():
        try:
            out.open("a").close()
        except OSError as error:
            raise ExportError(f"cannot write {out}: {error.strerror or error}") from None


def write_atomic(out: Path, text: str) -> None:
    """Write to a temporary file beside `out`, then rename: a reader never sees half a file."""
    partial = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    try:
        partial.write_text(text)
        partial.replace(out)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ExportError(f"cannot write {out}: {error.strerror or error}") from None


if __name__ == "__main__":
    sys.exit(main())
