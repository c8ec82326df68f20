"""What the command-line tools (objective.train, search.worker, search.export, search.report) share:
a bad command line is one `error: ...` line on stderr and exit code 2, like every other bad input,
and no password ever reaches a message."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from typing import NoReturn

# scheme://user:password@ -> scheme://user:***@, wherever a URL with a password shows up in a text.
URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@]*@")
MIN_SECRET = 4  # shorter known secrets are not replaced word by word: that would garble every line


def hide_passwords(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the password of every URL in it, and each of `secrets`, replaced by ***."""
    text = URL_PASSWORD.sub(r"\1***@", text)
    for secret in secrets:
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, "***")
    return text


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (argparse's default prints the usage block too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {hide_passwords(message)} (see --help)\n")
