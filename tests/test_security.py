"""Security defaults that a text scan or one call can check: no credentials in the repository,
cached tensors loaded with weights_only=True, passwords hidden in every message and log line.
(Published ports bound to 127.0.0.1 are checked in tests/test_compose.py; study names and paths
from the command line in tests/test_bad_input.py; the worker's output with a password in its
storage URL, through real runs and database outages, in tests/search/test_worker_faults.py.)"""

from __future__ import annotations

import ast
import io
import logging
import re
import subprocess
from pathlib import Path

import pytest

from objective.cli import hide_passwords
from search.progress import setup_logging
from studies.storage import secrets_of

ROOT = Path(__file__).resolve().parents[1]
URL_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"`]*:([^\s@/'\"`]*)@")
PLACEHOLDER = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Z_]+|password|\*\*\*")


def repository_files() -> list[Path]:
    """What git tracks, and what it would track (not ignored); the tests' fake passwords excepted."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    return [ROOT / name for name in names if not name.startswith("tests/") and (ROOT / name).is_file()]


def test_no_password_in_any_url_of_the_repository() -> None:
    found = []
    for path in repository_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{path.relative_to(ROOT)}: {match[0]}" for match in URL_WITH_PASSWORD.finditer(text)
                  if not PLACEHOLDER.fullmatch(match[1])]
    assert found == []


def test_env_holding_the_real_password_is_ignored_by_git() -> None:
    assert subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode == 0
    assert ".env" not in [path.name for path in repository_files()]


def test_every_torch_load_uses_weights_only() -> None:
    """Unpickling a tampered cache file must not run code: every torch.load says weights_only=True."""
    calls = []
    for path in repository_files():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", keywords.get("weights_only")))
    assert calls, "no torch.load found: the scan is broken"
    assert all(value == "True" for _, value in calls), calls


@pytest.mark.parametrize(("text", "expected"), [
    ("cannot connect to postgresql+psycopg://alice:s3cr3t@db:5432/optuna: refused",
     "cannot connect to postgresql+psycopg://alice:***@db:5432/optuna: refused"),
    ("unrecognized arguments: --storag mysql+pymysql://root:pw@127.0.0.1/x and sqlite:///optuna.db",
     "unrecognized arguments: --storag mysql+pymysql://root:***@127.0.0.1/x and sqlite:///optuna.db"),
    ("no password here: postgresql://alice@db/optuna", "no password here: postgresql://alice@db/optuna"),
])
def test_passwords_in_urls_are_hidden(text: str, expected: str) -> None:
    assert hide_passwords(text) == expected


def test_the_worker_log_hides_the_storage_password_anywhere_in_a_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://alice:p%40ss-w0rd@db:5432/optuna"
    assert secrets_of(url) == ["p%40ss-w0rd", "p@ss-w0rd"]
    logger = logging.getLogger("search")
    # The worker's logging setup, undone afterwards.
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "propagate", logger.propagate)
    monkeypatch.setattr(logger, "level", logger.level)
    stream = io.StringIO()
    setup_logging(secrets=secrets_of(url))
    handler = logger.handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    logger.warning("joined %s", url)
    logger.warning("the server said: password p@ss-w0rd is wrong")
    assert "p@ss-w0rd" not in stream.getvalue() and "p%40ss-w0rd" not in stream.getvalue()
    assert "alice:***@db" in stream.getvalue() and "password *** is wrong" in stream.getvalue()
