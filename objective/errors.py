"""The one error type for "the user's input is wrong", and how every tool words an error.

Each command-line tool catches `UserError` once, prints its message as one `error: ...` line on
stderr and exits 2. Anything else is a bug or a failing dependency, never reported as bad input.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a spec, config, device, data folder, storage URL or option the user can fix.
    The message is one line that names the input and the fix."""


def first_line(error: BaseException | str) -> str:
    """The first line of an error's message (what a driver or library says first), else its type."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    return type(error).__name__ if isinstance(error, BaseException) else "(no message)"
