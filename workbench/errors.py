"""Errors a user sees: one line that says what is wrong, where, and how to fix it."""

from __future__ import annotations


class WorkbenchError(Exception):
    """A user-facing failure. ``str(err)`` is a single line, never a traceback."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")


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
