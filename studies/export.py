"""Pick a study's best config and write it as a document that reproduces it.

Best = the lowest value among COMPLETE trials that are feasible (every Optuna constraint <= 0; the
objective's say the trial dominates the seed recipe), compared only within ONE hardware
fingerprint: seconds measured on different machines do not compare. The default fingerprint is
the most common one among complete trials; a device name picks another. The seed-recipe baseline
is eligible.

Reading is all an export does: it never writes to the study.
"""

from __future__ import annotations

import json
import secrets
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from objective.config import ConfigError, TrainConfig, from_dict
from objective.errors import UserError, first_line
from studies.storage import StorageError, engine_kwargs, load_existing, mask, parse_url

FORMATS = ("json", "yaml", "toml")
SUFFIX_FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}
VERIFY_FIRST_SEED = 1000  # verification seeds start here, away from the seeds a search uses
DEFAULT_TARGET = 0.99
UNKNOWN_DEVICE = "(no fingerprint)"


class ExportError(UserError):
    """Nothing (or nothing sensible) can be exported; the message is one line for the user."""


@dataclass(frozen=True)
class Choice:
    """The trial picked, the fingerprint it was picked within, and how, in words."""

    trial: FrozenTrial
    fingerprint: dict[str, Any]
    selection: str


# -- reading ------------------------------------------------------------------------------------


def open_study(url: str, study_name: str) -> optuna.Study:
    """The existing study `study_name` at `url`. A SQLite file that does not exist is an error,
    never a new empty database (sqlite would otherwise create the file on connect)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise StorageError(f"storage {mask(url)!r} is not a SQLite database file")
        if not Path(database).is_file():
            raise StorageError(f"no SQLite database at {database} (from {mask(url)!r})")
    _require_optuna_schema(url)
    return load_existing(url, study_name)


def _require_optuna_schema(url: str) -> None:
    """Opening an RDBStorage creates Optuna's tables where they are missing: a write, and in the
    wrong database a mess. So look first, with a throwaway engine, and refuse a database without them."""
    parsed = parse_url(url)
    engine = sqlalchemy.create_engine(parsed, **engine_kwargs(parsed))
    try:
        with engine.connect() as connection:
            present = sqlalchemy.inspect(connection).has_table("studies")
    except sqlalchemy.exc.DBAPIError as error:
        reason = first_line(error.orig if error.orig is not None else error)
        raise StorageError(f"cannot connect to {mask(url)}: {reason}") from None
    finally:
        engine.dispose()
    if not present:
        raise StorageError(f"{mask(url)} holds no Optuna studies (no Optuna tables); "
                           "check --storage or $OPTUNA_STORAGE")


def backend_name(url: str) -> str:
    """Only the database kind ("sqlite", "postgresql", ...): never host, user or password."""
    return make_url(url).get_backend_name()


def is_feasible(trial: FrozenTrial) -> bool:
    """Optuna's own rule: feasible when every constraint value is <= 0."""
    return all(value <= 0.0 for value in trial.constraints.values())


def fingerprint_of(trial: FrozenTrial) -> dict[str, Any]:
    value = trial.user_attrs.get("fingerprint")
    return dict(value) if isinstance(value, Mapping) else {}


def fingerprint_key(fingerprint: Mapping[str, Any]) -> str:
    return json.dumps(dict(fingerprint), sort_keys=True)


def describe(fingerprint: Mapping[str, Any]) -> str:
    """`NVIDIA H100 80GB HBM3 (cuda, torch 2.14.1, 16 threads)`, for messages."""
    if not fingerprint:
        return UNKNOWN_DEVICE
    device = fingerprint.get("device", "unknown device")
    details = [str(fingerprint[key]) for key in ("device_type",) if key in fingerprint]
    if "torch" in fingerprint:
        details.append(f"torch {fingerprint['torch']}")
    if "threads" in fingerprint:
        details.append(f"{fingerprint['threads']} threads")
    return f"{device} ({', '.join(details)})" if details else str(device)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def choose(trials: Iterable[FrozenTrial], device: str | None = None) -> Choice:
    """The best feasible COMPLETE trial within one fingerprint (see the module docstring)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        raise ExportError("no feasible trial: the study has no COMPLETE trial yet")
    groups: dict[str, list[FrozenTrial]] = {}
    for trial in complete:  # insertion order = order of first appearance, the tie-break
        groups.setdefault(fingerprint_key(fingerprint_of(trial)), []).append(trial)
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
    feasible = [t for t in groups[key] if is_feasible(t)]
    if not feasible:
        others = [describe(fingerprint_of(groups[k][0])) for k in ranked
                  if k != key and any(is_feasible(t) for t in groups[k])]
        hint = (f"; fingerprints with feasible trials: {'; '.join(others)} (pick one with --fingerprint)"
                if others else "")
        raise ExportError(f"no feasible trial: none of the {_plural(len(groups[key]), 'complete trial')} "
                          f"on {describe(fingerprint)} meets every constraint{hint}")
    best = min(feasible, key=lambda t: (t.value, t.number))
    baseline = " (the seed-recipe baseline)" if best.user_attrs.get("baseline") else ""
    selection = (f"trial {best.number}{baseline}: lowest value ({best.value:.4f}) among "
                 f"{_plural(len(feasible), 'feasible trial')} of "
                 f"{_plural(len(groups[key]), 'complete trial')} "
                 f"on fingerprint {describe(fingerprint)}, {how}; "
                 f"{_plural(len(complete), 'complete trial')} in the study")
    return Choice(trial=best, fingerprint=fingerprint, selection=selection)


def _match_device(groups: Mapping[str, list[FrozenTrial]], ranked: list[str], device: str) -> str:
    """The most common fingerprint whose device is `device` (exact, else a unique substring),
    ignoring case."""
    names = {key: str(fingerprint_of(members[0]).get("device", UNKNOWN_DEVICE))
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


def trial_config(trial: FrozenTrial, study_attrs: Mapping[str, Any]) -> TrainConfig:
    """The whole config the trial trained: its `config` attribute, else the study's base config
    with the trial's params over it."""
    try:
        recorded = trial.user_attrs.get("config")
        if isinstance(recorded, Mapping):
            return from_dict(dict(recorded))
        base = study_attrs.get("base_config")
        if isinstance(base, Mapping):
            return from_dict({**base, **trial.params})
    except ConfigError as error:
        raise ExportError(f"trial {trial.number} has a config that cannot train: {error}") from None
    raise ExportError(f"trial {trial.number} records no config (no `config` trial attribute and no "
                      "`base_config` study attribute)")


def accuracy_target(study_attrs: Mapping[str, Any]) -> float:
    value = study_attrs.get("accuracy_target", DEFAULT_TARGET)
    return float(value)


def build_document(study: optuna.Study, choice: Choice, url: str) -> dict[str, Any]:
    trial = choice.trial
    attrs = study.user_attrs
    config = trial_config(trial, attrs)
    metrics: dict[str, Any] = {
        "accuracy": trial.user_attrs.get("accuracy"),
        "seconds": trial.user_attrs.get("seconds"),
        "train_seconds": trial.user_attrs.get("train_seconds"),
        "value": trial.value,
        "accuracy_target": accuracy_target(attrs),
    }
    for key in ("accuracies", "vs_baseline"):  # per seed; seconds over the seed recipe's here
        if key in trial.user_attrs:
            metrics[key] = trial.user_attrs[key]
    return {
        "config": config.to_dict(),
        "metrics": metrics,
        "trial": trial.number,
        "baseline": bool(trial.user_attrs.get("baseline", False)),
        "study": study.study_name,
        "provenance": {
            "storage": backend_name(url),
            "optuna": optuna.__version__,
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "spec": attrs.get("spec"),
        },
        "fingerprint": choice.fingerprint,
        "selection": choice.selection,
    }


# -- verification -------------------------------------------------------------------------------


def verification_seeds(config: TrainConfig, count: int, used: int = 1) -> list[int]:
    """`count` seeds the search did not train with: it used config.seed .. config.seed + used - 1."""
    first = max(VERIFY_FIRST_SEED, config.seed + used)
    return list(range(first, first + count))


def verify(config: TrainConfig, seeds: list[int], target: float,
           run: Callable[[TrainConfig], Any],
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Retrain `config` once per seed with `run` (returns an objective.trainer.RunResult) and
    summarize: pass_rate is the fraction of seeds whose accuracy reaches `target`."""
    if not seeds:
        raise ExportError("verification needs at least one seed")
    runs = []
    for seed in seeds:
        result = run(config.replace(seed=seed))
        runs.append(result)
        if progress is not None:
            flag = " (diverged)" if result.diverged else ""
            progress(f"verify seed {seed}: {result.seconds:.3f} s, "
                     f"accuracy {100 * result.accuracy:.2f} %{flag}")
    accuracies = [r.accuracy for r in runs]
    passed = sum(1 for r in runs if r.accuracy >= target and not r.diverged)
    fingerprint = dict(runs[0].fingerprint)
    return {
        "seeds": list(seeds),
        "target": target,
        "pass_rate": passed / len(runs),
        "mean_accuracy": statistics.fmean(accuracies),
        "std_accuracy": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "median_seconds": statistics.median(r.seconds for r in runs),
        "runs": [{key: value for key, value in r.to_dict().items() if key != "fingerprint"}
                 for r in runs],
        "fingerprint": fingerprint,
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
    """Fail now, not after a long verification, when `out` cannot be written."""
    if out.is_dir():
        raise ExportError(f"cannot write {out}: it is a directory")
    parent = out.parent
    if not parent.is_dir():
        raise ExportError(f"cannot write {out}: directory {parent} does not exist")
    probe = parent / f".{out.name}.{_token()}.probe"
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
    partial = out.parent / f".{out.name}.{_token()}.tmp"
    try:
        partial.write_text(text)
        partial.replace(out)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ExportError(f"cannot write {out}: {error.strerror or error}") from None


def _token() -> str:
    return secrets.token_hex(4)
