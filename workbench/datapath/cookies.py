"""The policy cookie table: which policies a policy-map entry's cookie names.

Every policy-map value carries a u32 ``cookie`` (struct policy_value in
bpf/lib/types.h) and the datapath copies the deciding entry's cookie into its
policy-verdict and drop events, so a flow can say which policies allowed or
denied it (Hubble's ``*_allowed_by`` / ``*_denied_by``). A cookie is an index
into this table, whose rows are the sorted "namespace/name" keys ("name" for a
clusterwide policy) of the policies that produced an entry.

Why an interning table that only grows, instead of one table per policy
generation: events are read from the ring after the programs wrote them, so a
cookie of the old generation may be read after the swap (or after two). With
rows never reused or changed, every cookie the datapath ever wrote resolves
to what it meant while the lab lives. The table grows by the distinct sets of
policies ever applied together, a few per apply.

Why a file: the datapath outlives the agent (pinned maps), and a restarted
agent must read the cookies already in the map. The table is written to the
lab's state directory (``policy_cookies.json``, mode 0600) before any map entry
uses a new cookie, atomically (a temporary file and a rename), and loaded by
the next agent. Without a path (test beds, benches) it lives in memory.

Example::

    >>> table = PolicyCookies()
    >>> table.cookie(("default/rule1",)), table.cookie(()), table.rules_of(1)
    (1, 0, ('default/rule1',))
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from workbench.datapath import abi
from workbench.errors import ValidationError

COOKIE_FILE = "policy_cookies.json"
MAX_COOKIE = 0xFFFFFFFF  # struct policy_value.cookie is a u32


class PolicyCookies:
    """Rule sets <-> u32 cookies; cookie 0 (:data:`abi.POLICY_COOKIE_NONE`) is the empty set."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._rows: list[tuple[str, ...]] = [()]
        self._index: dict[tuple[str, ...], int] = {(): abi.POLICY_COOKIE_NONE}
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            rows = json.loads(path.read_text())
            if not isinstance(rows, list) or rows[:1] != [[]] or \
                    not all(isinstance(r, list) and all(isinstance(n, str) for n in r) for r in rows):
                raise ValueError("not a list of name lists starting with []")
        except (OSError, ValueError) as err:
            raise ValidationError(f"policy cookie table {path} is unreadable: {err}",
                                  hint="flows would name the wrong policies; recreate the lab") from err
        self._rows = [tuple(r) for r in rows]
        self._index = {row: number for number, row in enumerate(self._rows)}

    def __len__(self) -> int:
        return len(self._rows)

    def cookie(self, rules: Iterable[str]) -> int:
        """The cookie of a set of policy keys (order and repeats do not matter); new sets are saved first."""
        return self.cookies([rules])[0]

    def cookies(self, rule_sets: Iterable[Iterable[str]]) -> list[int]:
        """:meth:`cookie` for many sets, with one write of the table for all the new ones."""
        keys = [tuple(sorted(set(rules))) for rules in rule_sets]
        with self._lock:
            new = [k for k in dict.fromkeys(keys) if k not in self._index]
            if new:
                if len(self._rows) + len(new) > MAX_COOKIE:
                    raise ValidationError("policy cookie table is full (2^32 rule sets)")
                rows = self._rows + new
                self._save(rows)   # before any map entry can carry the new cookies
                for key in new:
                    self._index[key] = len(self._rows)
                    self._rows.append(key)
            return [self._index[k] for k in keys]

    def rules_of(self, cookie: int) -> tuple[str, ...]:
        """The policy keys behind a cookie; () for 0 and for a cookie this table never gave out."""
        rows = self._rows   # appended to only: a reader without the lock sees a consistent prefix
        return rows[cookie] if 0 <= cookie < len(rows) else ()

    def names(self) -> set[str]:
        """Every policy key a cookie ever named in this lab (for validating a ``policy`` filter)."""
        return {name for row in self._rows for name in row}

    def _save(self, rows: list[tuple[str, ...]]) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump([list(r) for r in rows], out)
        os.replace(tmp, self.path)   # atomic: a crash never leaves half a table
