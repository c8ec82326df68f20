"""Which spec file, and reading it: the part of loading a spec that needs no Optuna, so the worker
answers a wrong --spec path or broken TOML before Optuna loads (studies/spec.py validates the rest)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from objective.errors import UserError

DEFAULT_SPEC = "studies/mnist_fast.toml"


class SpecError(UserError):
    """A spec that cannot become a study; the message names the file, the key and the fix."""


def default_spec() -> str:
    """studies/mnist_fast.toml from the working directory, else the copy installed with the package."""
    if Path(DEFAULT_SPEC).exists():
        return DEFAULT_SPEC
    return str(Path(__file__).resolve().parents[1] / DEFAULT_SPEC)


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The TOML document at `path`; a SpecError that names it if it cannot be read or parsed."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except OSError as error:
        raise SpecError(f"cannot read spec {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise SpecError(f"spec {path} is not a text file") from None
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"spec {path} is not valid TOML: {error}") from None
