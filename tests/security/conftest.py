"""Fixtures of the adversarial suite: one star-wars lab per module, and reading what its pods really did.

Every test here attacks a real lab (unless its module is marked
``unprivileged``): what counts is what the kernel, the agent and the backend
did, never what a client was told.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

import workbench as wb

# The deathstar app logs each request it answers: '<pod> <addr> "<request line>" <code> -'.
_REQUEST_LOG = re.compile(r'^\S+ \S+ "(\S+) (\S+) HTTP/1\.[01]" (\d{3}) ')
# Codes the deathstar's own routes give: a line with one of them is a request its handler ran
# (400/501/505 are http.server's answers to input it could not parse as a request).
EXECUTED_CODES = {"200", "404", "503"}


def lab_name(tag: str = "sec") -> str:
    """A lab name no other run can share (lab names: lowercase letters and digits)."""
    return f"{tag}{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="session")
def starwars_lab() -> Iterator[wb.Lab]:
    """The star-wars demo in a lab of the suite's own, removed afterwards (also after failures).

    Shared by the modules that only apply policies and send traffic (each
    deletes its policies when done); a module that restarts or starves the
    agent starts a lab of its own.
    """
    lab = wb.Lab.up(name=lab_name())
    try:
        yield lab
    finally:
        lab.down()


class BackendLog:
    """What the deathstar pods executed, read from their log files (the proxy cannot forge these)."""

    def __init__(self, lab: wb.Lab) -> None:
        from workbench.node.state import log_dir

        self.files = sorted(log_dir(lab.name).glob("deathstar*.log"))
        assert self.files, f"no deathstar logs under {log_dir(lab.name)}"
        self.offsets = {path: path.stat().st_size for path in self.files}

    def new_lines(self) -> list[str]:
        """Log lines written since the last call."""
        lines: list[str] = []
        for path in self.files:
            with path.open("rb") as log:
                log.seek(self.offsets[path])
                data = log.read()
            self.offsets[path] += len(data)
            lines += data.decode("latin-1").splitlines()
        return lines

    @staticmethod
    def executed(lines: list[str]) -> list[tuple[str, str]]:
        """(method, path) of every request the backend's handler ran; absolute-form targets reduced to the path."""
        out = []
        for line in lines:
            match = _REQUEST_LOG.match(line)
            if match and match.group(3) in EXECUTED_CODES:
                out.append((match.group(1), urlsplit(match.group(2)).path or "/"))
        return out

    @staticmethod
    def requests(lines: list[str]) -> list[str]:
        """Every request line the backend parsed, executed or not (its 400/501 answers included)."""
        return [line for line in lines if _REQUEST_LOG.match(line) or "code 400" in line or "code 501" in line]
