"""`python -m search.export`: write a study's best config as a document that reproduces it.

    python -m search.export --storage sqlite:///optuna.db --study mnist_fast --out best.json
        [--format json|yaml|toml] [--fingerprint DEVICE_NAME] [--verify N [--device auto|cpu|cuda]
        [--data-dir DIR] [--threads N]]

Best = the lowest value among COMPLETE, feasible trials (every constraint <= 0) on one hardware
fingerprint: the most common one, or the device named by --fingerprint. The document holds the
whole `config` (what `python -m objective.train --config best.json` takes), the trial's metrics,
its fingerprint, provenance (storage kind, Optuna version, time, spec) and how it was picked.
--verify N retrains the config on N fresh seeds here and adds a `verification` block.
The format follows --format, else the --out suffix (.json, .yaml/.yml, .toml), else JSON;
`--out -` writes to stdout. The study is only read, never written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna
import sqlalchemy

from objective.cli import OneLineParser
from objective.errors import UserError, first_line
from studies.export import (
    Choice,
    ExportError,
    accuracy_target,
    build_document,
    check_writable,
    choose,
    describe,
    format_for,
    open_study,
    render,
    trial_config,
    verification_seeds,
    verify,
    write_atomic,
)
from studies.spec import validate_study_name
from studies.storage import StorageError, mask, resolve_url


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
        say(f"error: cannot read {mask(url)}: {first_line(getattr(error, 'orig', None) or error)}")
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

    try:
        study = open_study(url, args.study)
        trials = study.get_trials(deepcopy=False)
    except RuntimeError as error:  # e.g. Optuna's schema-version check; StorageError passes through
        if isinstance(error, StorageError):
            raise
        raise ExportError(f"cannot read {mask(url)}: {first_line(error)}") from None
    choice = choose(trials, device=args.fingerprint)
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


def run_verification(args: argparse.Namespace, study: optuna.Study, choice: Choice) -> dict[str, object]:
    # Imported here: torch is slow to import and only a verification needs it.
    import torch

    from objective.data import load_resident, resolve_root
    from objective.trainer import resolve_device, train_once

    trial = choice.trial
    config = trial_config(trial, study.user_attrs)
    target = accuracy_target(study.user_attrs)
    used = len(trial.user_attrs.get("accuracies") or [None])
    seeds = verification_seeds(config, args.verify, used=used)
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = load_resident(resolve_root(args.data_dir), device)
    say(f"verifying trial {trial.number} on {device} with seeds {seeds[0]}..{seeds[-1]} "
        f"(target {100 * target:.2f} %)")
    block = verify(config, seeds, target, run=lambda c: train_once(c, data), progress=say)
    if block["fingerprint"] != choice.fingerprint:
        say(f"note: verified on {describe(block['fingerprint'])}, not on the trial's "
            f"{describe(choice.fingerprint)}: compare the seconds with care")
    say(f"verification: pass rate {block['pass_rate']:.2f}, mean accuracy "
        f"{100 * block['mean_accuracy']:.2f} %, median {block['median_seconds']:.3f} s")
    return block


if __name__ == "__main__":
    sys.exit(main())
