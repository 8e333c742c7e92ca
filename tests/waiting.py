"""Waiting on a condition under a deadline, instead of sleeping and hoping.

A fixed ``time.sleep`` followed by an exact count is a race on a slow or busy
machine: the ring reader, the agent's poll or the kernel's FIN exchange may
need longer than the sleep. Tests here poll the condition itself and fail
with a message naming what never happened.

Example::

    from tests.waiting import wait_until

    rows = wait_until(lambda: lab.flows(verdict="DROPPED"), 10, "a dropped flow")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``predicate`` until it returns something truthy; return that value.

    A pandas frame or series has no truth value; here it counts as ready when
    it is not empty (``None`` is never ready), so a predicate can return the
    rows it was waiting for.

    Raises ``AssertionError("timed out after <timeout> s waiting for <what>")``
    when the deadline passes; the last value seen is part of the message, so a
    near miss (3 flows where 4 were expected) is visible. The predicate is
    always called once more at the deadline, so a slow first call cannot make
    a true condition fail.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if _ready(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last value: {_short(value)})")
        time.sleep(interval)


def wait_exited(pid: int, timeout: float = 10) -> None:
    """Wait until process ``pid`` has exited (gone, or a zombie its parent has not reaped yet).

    A SIGKILLed process closes its sockets as it exits, a moment after the kill::

        os.kill(pid, signal.SIGKILL)
        wait_exited(pid)
    """
    wait_until(lambda: _state(pid) in ("gone", "Z"), timeout, f"process {pid} to exit")


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _ready(value: object) -> bool:
    if value is None:
        return False
    if hasattr(value, "empty") and hasattr(value, "index"):  # pandas
        return not value.empty
    return bool(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
