"""`policy rules`: one row per rule of every applied policy, with the packets the live map counted for it.

The compiler records which entry keys each rule produced
(:attr:`~workbench.policy.compiler.CompiledPolicy.rule_keys`); the policy map
counts, per slot, the first packets of the connections that slot decided.
A rule's counters are the sum over the live slots it stands behind:

- an **allow** rule: the allow slots its keys became (ANY split into TCP, UDP
  and SCTP, ranges into port blocks). A key a deny overrides (the slot holds a
  deny) counts for the deny, not for the allow;
- a **deny** rule: every deny slot inside one of its keys, including the
  narrower denies the compiler carved out of allows it overlaps.

One slot produced by two rules counts for both, so rule counters may add up
to more than the map's total. A rule that matched nothing shows 0: dead
rules are visible.

Example::

    >>> rows = rule_rows([], CompiledPolicy(), [])
    >>> rows
    []
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from workbench.datapath.abi import POLICY_PROTOCOLS
from workbench.lab.model import PolicyEntry
from workbench.policy.compiler import CompiledPolicy, EntryKey, _slot_entries, entry_key
from workbench.policy.ports import PORT_BITS
from workbench.policy.rules import PolicyDocument, PolicyRule

COLUMNS = ["policy", "rule", "direction", "action", "peers", "ports", "l7", "entries", "packets", "bytes"]


def live_entries(rows: Iterable[Mapping[str, Any]]) -> list[PolicyEntry]:
    """Rows of the policy map (``PolicyMapWriter.entries()`` records) -> entries, as the datapath reads them.

    A shadowed allow is a deny in the map (the datapath sees only the deny).
    """
    out = []
    for row in rows:
        protocol = row["protocol"]
        number = POLICY_PROTOCOLS.get(str(protocol), None) if not str(protocol).isdigit() else int(protocol)
        out.append(PolicyEntry(
            int(row["ep_id"]), row["direction"], int(row["identity"]), int(number or 0), int(row["port"]),
            int(row["port_prefix"]), deny=row["action"] == "deny", proxy_port=int(row.get("proxy_port") or 0),
            rules=tuple(row.get("rules") or ())))
    return out


def _covers(key: EntryKey, slot: EntryKey) -> bool:
    """Does the packet set of ``key`` (protocol 0 = any, prefix blocks) include that of ``slot``?"""
    _, _, identity, protocol, port, prefix = key
    if identity not in (0, slot[2]) or protocol not in (0, slot[3]):
        return False
    if prefix == 0:
        return True
    if slot[3] == 0 or slot[5] < prefix:
        return False
    return (port >> (PORT_BITS - prefix)) == (slot[4] >> (PORT_BITS - prefix))


def rule_slots(compiled: CompiledPolicy, policy: str, path: str, deny: bool,
               slots: Sequence[tuple[EntryKey, bool]]) -> set[EntryKey]:
    """The slots (of ``slots``: (key, is deny)) whose counters belong to one rule (see the module docstring)."""
    keys = compiled.rule_keys.get((policy, path), set())
    if not keys:
        return set()
    if not deny:
        wanted = {entry_key(s) for k in keys for s in _slot_entries(PolicyEntry(*k))}
        return {key for key, is_deny in slots if not is_deny and key in wanted}
    by_scope: dict[tuple[int, str], list[EntryKey]] = defaultdict(list)
    for k in keys:
        by_scope[(k[0], k[1])].append(k)
    return {key for key, is_deny in slots
            if is_deny and any(_covers(k, key) for k in by_scope.get((key[0], key[1]), ()))}


def _group(doc: PolicyDocument) -> dict[str, list[PolicyRule]]:
    """A document's rules by path (a CNP rule with L7 toPorts items is several typed rules with one path)."""
    groups: dict[str, list[PolicyRule]] = {}
    for spec in doc.specs:
        for rule in spec.rules:
            groups.setdefault(rule.path, []).append(rule)
    return groups


def rule_rows(documents: Iterable[PolicyDocument], compiled: CompiledPolicy,
              live: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per rule (columns :data:`COLUMNS`), counters summed over ``live`` (the map's records)."""
    counters: dict[EntryKey, tuple[int, int]] = {}
    slots: list[tuple[EntryKey, bool]] = []
    for row in live:
        entry = live_entries([row])[0]
        key = entry_key(entry)
        counters[key] = (int(row.get("packets") or 0), int(row.get("bytes") or 0))
        slots.append((key, entry.deny))
    rows = []
    for doc in documents:
        for path, rules in _group(doc).items():
            first = rules[0]
            mine = rule_slots(compiled, doc.key, path, first.deny, slots)
            ports = [str(p) for r in rules for p in r.ports]
            l7 = [str(h) for r in rules for h in (r.http or ())]
            l7 += [f"dns({d})" for r in rules for d in (r.dns or ())]
            rows.append({
                "policy": doc.key, "rule": path, "direction": first.direction,
                "action": "deny" if first.deny else "allow",
                "peers": "any peer" if first.peers is None else str(first.peers),
                "ports": ", ".join(dict.fromkeys(ports)) or "any",
                "l7": list(dict.fromkeys(l7)), "entries": len(mine),
                "packets": sum(counters[k][0] for k in mine), "bytes": sum(counters[k][1] for k in mine),
            })
    return rows


def rules_frame(rows: list[dict[str, Any]]) -> Any:
    """:func:`rule_rows` as a pandas DataFrame (columns :data:`COLUMNS`)."""
    import pandas as pd

    return pd.DataFrame(rows, columns=COLUMNS)
