"""Human views of a compiled policy: one row per entry, and what a change would do.

:func:`explain` gives rows (plain dicts, DataFrame-ready) for ``workbench
policy get`` and ``lab.policy``; :func:`diff` compares two compiles for
``%%policy --dry-run``: which endpoints change enforcement, which entries
appear, disappear or change verdict/sources.

Example::

    >>> rows = explain(CompiledPolicy())
    >>> rows
    []
    >>> diff(CompiledPolicy(), CompiledPolicy()).empty
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.datapath.abi import POLICY_PROTOCOL_NAMES
from workbench.lab.model import Direction, PolicyEntry
from workbench.policy.compiler import CompiledPolicy, entry_key
from workbench.policy.ports import block_range

COLUMNS = ["ep_id", "pod", "direction", "identity", "peer_labels", "protocol", "port", "verdict",
           "match_type", "rules", "http", "cidr", "dns", "note"]


def port_text(entry: PolicyEntry) -> str:
    """80, 8080-8087, or * (any port)."""
    if entry.protocol == 0 or entry.port_prefix == 0:
        return "*"
    first, last = block_range(entry.port, entry.port_prefix)
    return str(first) if first == last else f"{first}-{last}"


def entry_row(compiled: CompiledPolicy, entry: PolicyEntry) -> dict[str, Any]:
    """One entry as a flat dict with the columns of :data:`COLUMNS`."""
    return {
        "ep_id": entry.ep_id,
        "pod": compiled.endpoint_names.get(entry.ep_id, ""),
        "direction": entry.direction,
        "identity": entry.identity,
        "peer_labels": list(compiled.identity_labels.get(entry.identity, ())),
        "protocol": POLICY_PROTOCOL_NAMES.get(entry.protocol, str(entry.protocol)),
        "port": port_text(entry),
        "verdict": "deny" if entry.deny else "allow",
        "match_type": entry.match_type,
        "rules": list(entry.rules),
        # L7: the HTTP rules a redirected request must match (empty: not proxied)
        "http": [str(r) for r in compiled.l7.get(entry_key(entry), ())],
        # when a CIDR rule selects the peer: which meaning it has for pods (NetworkPolicy ipBlock or Cilium)
        "cidr": "; ".join(compiled.cidr_notes.get((entry.ep_id, entry.direction, entry.identity), ())),
        # DNS: the names a query redirected to the DNS proxy may ask for (empty: not for the DNS proxy)
        "dns": [f"dns({d})" for d in compiled.dns.get(entry_key(entry), ())],
        "note": "",
    }


def explain(compiled: CompiledPolicy, *, pod: str | None = None,
            direction: Direction | None = None) -> list[dict[str, Any]]:
    """Rows for every entry, optionally only one pod ("ns/pod" or "pod") or direction.

    An enforced direction without entries shows as one ``default-deny`` row, so
    "this pod accepts nothing" is visible too. The first row of an endpoint's
    direction carries, in ``note``, what its entries cannot show (a
    ``toFQDNs`` rule that learns nothing, or has selected no address yet).
    """
    rows = [entry_row(compiled, e) for e in compiled.entries]
    with_entries = {(e.ep_id, e.direction) for e in compiled.entries}
    for ep_id, d in sorted(compiled.enforced - with_entries):
        rows.append({"ep_id": ep_id, "pod": compiled.endpoint_names.get(ep_id, ""), "direction": d,
                     "identity": None, "peer_labels": [], "protocol": "", "port": "",
                     "verdict": "default-deny", "match_type": "none", "rules": [], "http": [], "cidr": "",
                     "dns": [], "note": ""})
    if pod is not None:
        rows = [r for r in rows if r["pod"] == pod or r["pod"].split("/", 1)[-1] == pod]
    if direction is not None:
        rows = [r for r in rows if r["direction"] == direction]
    rows = sorted(rows, key=lambda r: (r["ep_id"], r["direction"], r["identity"] or 0, r["protocol"], r["port"]))
    noted: set[tuple[int, str]] = set()
    for row in rows:
        group = (row["ep_id"], row["direction"])
        if group not in noted:
            noted.add(group)
            row["note"] = "; ".join(compiled.notes.get(group, ()))
    return rows


def explain_frame(compiled: CompiledPolicy, **filters: Any) -> Any:
    """:func:`explain` as a pandas DataFrame (columns :data:`COLUMNS`)."""
    import pandas as pd

    return pd.DataFrame(explain(compiled, **filters), columns=COLUMNS)


@dataclass
class PolicyDiff:
    """What changes between two compiles (old -> new)."""

    added: list[PolicyEntry] = field(default_factory=list)
    removed: list[PolicyEntry] = field(default_factory=list)
    changed: list[tuple[PolicyEntry, PolicyEntry]] = field(default_factory=list)
    enforced_added: set[tuple[int, Direction]] = field(default_factory=set)
    enforced_removed: set[tuple[int, Direction]] = field(default_factory=set)
    endpoint_names: dict[int, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.enforced_added or self.enforced_removed)

    @property
    def endpoints(self) -> list[int]:
        """Ids of the endpoints whose policy changes."""
        ids = {e.ep_id for e in self.added + self.removed} | {old.ep_id for old, _ in self.changed}
        ids |= {ep for ep, _ in self.enforced_added | self.enforced_removed}
        return sorted(ids)

    def rows(self, compiled_old: CompiledPolicy, compiled_new: CompiledPolicy) -> list[dict[str, Any]]:
        """DataFrame-ready rows: each with a ``change`` column (+, -, ~, enforce, unenforce)."""
        rows = [{"change": "+", **entry_row(compiled_new, e)} for e in self.added]
        rows += [{"change": "-", **entry_row(compiled_old, e)} for e in self.removed]
        rows += [{"change": "~", **entry_row(compiled_new, new)} for _, new in self.changed]
        for change, pairs in (("enforce", self.enforced_added), ("unenforce", self.enforced_removed)):
            for ep_id, d in sorted(pairs):
                rows.append({"change": change, "ep_id": ep_id, "pod": self.endpoint_names.get(ep_id, ""),
                             "direction": d})
        return rows

    def summary(self) -> str:
        """One line, e.g. "2 endpoints: +4 -0 ~0 entries, 2 newly default-deny"."""
        if self.empty:
            return "no change"
        return (f"{len(self.endpoints)} endpoint(s): +{len(self.added)} -{len(self.removed)} "
                f"~{len(self.changed)} entries, {len(self.enforced_added)} newly default-deny, "
                f"{len(self.enforced_removed)} no longer default-deny")


def diff(old: CompiledPolicy, new: CompiledPolicy) -> PolicyDiff:
    """Entries added, removed and changed (verdict, proxy port or sources), and enforcement changes."""
    old_map = {entry_key(e): e for e in old.entries}
    new_map = {entry_key(e): e for e in new.entries}
    result = PolicyDiff(endpoint_names={**old.endpoint_names, **new.endpoint_names})
    result.added = [new_map[k] for k in sorted(new_map.keys() - old_map.keys())]
    result.removed = [old_map[k] for k in sorted(old_map.keys() - new_map.keys())]
    result.changed = [(old_map[k], new_map[k]) for k in sorted(old_map.keys() & new_map.keys())
                      if old_map[k] != new_map[k]]
    result.enforced_added = new.enforced - old.enforced
    result.enforced_removed = old.enforced - new.enforced
    return result
