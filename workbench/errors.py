"""Errors a user sees: one line that says what is wrong, where, and how to fix it."""

from __future__ import annotations

import re

# What str.splitlines() breaks at: shown escaped, since messages quote user input (field names, values).
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with its line breaks escaped: one_line("a\\nb") == "a\\\\nb"."""
    return _LINE_BREAKS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class WorkbenchError(Exception):
    """A user-facing failure. ``str(err)`` is a single line, never a traceback."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = one_line(message)
        self.hint = one_line(hint) if hint else hint
        super().__init__(self.message if not self.hint else f"{self.message} ({self.hint})")


class SetupError(WorkbenchError):
    """A setup step is missing (bpffs, headers, BCC). The hint names the fix."""


class PrivilegeError(WorkbenchError):
    """The caller lacks root or a capability the operation needs."""


class NotFoundError(WorkbenchError):
    """A named object (pod, lab, policy, program) does not exist."""


class ValidationError(WorkbenchError, ValueError):
    """Bad input (manifest, policy, C program): says the document and field path.

    Also a ValueError, so pure helpers can raise it where callers expect one.
    """
