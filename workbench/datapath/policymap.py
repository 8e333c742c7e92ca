"""The policy map writer: puts the compiler's slots into the kernel's policy map, generation by generation.

The writer writes exactly what it is given: one map key per
:class:`~workbench.lab.model.PolicyEntry`. Which slots to write (deny
precedence, ANY-protocol expansion, port blocks) is the compiler's decision
(:func:`workbench.policy.compiler.map_entries`, :func:`~workbench.policy.compiler.live_edit`);
this module only checks that each entry fits the key and that no two share one.
A complete policy goes into the inactive generation, then one array slot
flips, so no packet is ever judged by a half-written policy.

The map layout is struct policy_key in bpf/lib/types.h: fixed fields
(generation, direction, endpoint) first, then identity, protocol and the port
in network order, so that "any identity", "any protocol" and port ranges are
all just shorter prefixes.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, TypeVar

import pandas as pd

from workbench.datapath import abi
from workbench.datapath.cookies import PolicyCookies
from workbench.errors import ValidationError
from workbench.lab.model import Direction, PolicyEntry

# How long the old generation stays after the flip: programs that read the old
# generation number just before the flip finish within microseconds (they run
# under RCU), this is generous.
OLD_GENERATION_GRACE_S = 0.005
PORT_BITS = 16  # struct policy_key.dport
EditResult = TypeVar("EditResult")


@dataclass(frozen=True)
class Slot:
    """One policy-map key, without the generation (that is the writer's business)."""

    ep_id: int
    direction: Direction
    identity: int
    protocol: int
    port: int         # first port of the block (0 when protocol is 0)
    port_prefix: int  # 0..16; 0 when protocol is 0

    @classmethod
    def of(cls, e: PolicyEntry) -> Slot:
        return cls(e.ep_id, e.direction, e.identity, e.protocol, e.port, e.port_prefix)

    @property
    def prefixlen(self) -> int:
        if self.protocol == abi.PROTO_ANY:
            return abi.POLICY_PREFIX_IDENTITY
        return abi.POLICY_PREFIX_PROTO + self.port_prefix

    @property
    def last_port(self) -> int:
        """The block's last port (0 for any protocol)."""
        return self.port + (1 << (PORT_BITS - self.port_prefix)) - 1 if self.protocol else 0

    def covers(self, other: Slot) -> bool:
        """True when every packet ``other`` matches is matched by this slot too (same endpoint, direction, peer)."""
        if (self.ep_id, self.direction, self.identity) != (other.ep_id, other.direction, other.identity):
            return False
        if self.protocol == abi.PROTO_ANY:
            return True
        return self.protocol == other.protocol and self.port_prefix <= other.port_prefix and \
            self.port <= other.port and other.last_port <= self.last_port


def attribution(slots: dict[Slot, PolicyEntry]) -> dict[Slot, tuple[str, ...]]:
    """The policies a verdict decided by each slot is attributed to (what its cookie names).

    An entry's own ``rules``, except for a shadowed entry: it stands for an allow
    but decides as a deny, so it names the denies that cover it (the policies
    that really drop the packet).

    Example::

        >>> deny = PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True, rules=("default/no-300",))
        >>> shadowed = PolicyEntry(1, "ingress", 300, 6, 80, 16, deny=True, shadowed=True, rules=("default/web",))
        >>> attribution(check_slots([deny, shadowed]))[Slot.of(shadowed)]
        ('default/no-300',)
    """
    out: dict[Slot, tuple[str, ...]] = {}
    denies = [(slot, e) for slot, e in slots.items() if e.deny and not e.shadowed]
    for slot, entry in slots.items():
        if entry.shadowed:
            covering = {name for deny_slot, deny in denies if deny_slot.covers(slot) for name in deny.rules}
            out[slot] = tuple(sorted(covering)) or entry.rules
        else:
            out[slot] = entry.rules
    return out


def check_slots(entries: Iterable[PolicyEntry]) -> dict[Slot, PolicyEntry]:
    """Entries -> their map keys, refusing any that does not fit struct policy_key or shares a key.

    Example::

        >>> from workbench.lab.model import PolicyEntry
        >>> [s.prefixlen for s in check_slots([PolicyEntry(1, "ingress", 300, 6, 80, 16)])]
        [96]
    """
    slots: dict[Slot, PolicyEntry] = {}
    for e in entries:
        where = f"policy entry for endpoint {e.ep_id} {e.direction}"
        if e.direction not in abi.DIRECTIONS:
            raise ValidationError(f"{where}: direction must be ingress or egress, not {e.direction!r}")
        if not 0 <= e.ep_id <= 0xFFFF:
            raise ValidationError(f"{where}: endpoint id must be 0-65535")
        if not 0 <= e.identity <= 0xFFFFFFFF:
            raise ValidationError(f"{where}: identity {e.identity} is not a u32")
        if not 0 <= e.protocol <= 255:
            raise ValidationError(f"{where}: protocol {e.protocol} is not 0-255")
        if not 0 <= e.port_prefix <= PORT_BITS or not 0 <= e.port <= 0xFFFF:
            raise ValidationError(f"{where}: port {e.port}/{e.port_prefix} must be 0-65535 with 0-16 prefix bits")
        if not 0 <= e.proxy_port <= 0xFFFF:
            raise ValidationError(f"{where}: proxy port {e.proxy_port} must be 0-65535")
        if e.protocol == abi.PROTO_ANY and (e.port, e.port_prefix) != (0, 0) or \
                e.port & ((1 << (PORT_BITS - e.port_prefix)) - 1) or e.shadowed and not e.deny:
            raise ValidationError(f"{where}: {e} is not a map slot (a port needs a protocol and the first "
                                  "port of its block; shadowed is a deny)",
                                  hint="plan slots with workbench.policy.compiler.map_entries")
        slot = Slot.of(e)
        if slot in slots:
            raise ValidationError(f"{where}: two entries for one map key: {slots[slot]} and {e}",
                                  hint="plan slots with workbench.policy.compiler.map_entries")
        slots[slot] = e
    return slots


ENTRY_COLUMNS = ["ep_id", "direction", "identity", "protocol", "port", "port_end", "port_prefix",
                 "action", "shadowed", "match_type", "proxy_port", "packets", "bytes", "rules"]


class PolicyMapWriter:
    """Writes policy into the pinned policy map of one lab, generation by generation.

    Obtained from :meth:`workbench.datapath.loader.Datapath.policy_writer`.

    Example::

        >>> from workbench.policy.compiler import live_edit             # doctest: +SKIP
        >>> w = datapath.policy_writer()                                 # doctest: +SKIP
        >>> w.apply([PolicyEntry(3, "ingress", 300, 6, 80, 16)], {(3, "ingress")})  # doctest: +SKIP
        >>> w.edit(live_edit("deny", 3, "ingress", identity=301))        # doctest: +SKIP
        >>> w.entries()[["ep_id", "identity", "port", "action", "packets"]]  # doctest: +SKIP
    """

    def __init__(self, bpf: Any, capacity: int, enforce_capacity: int, lab: str,
                 cookies: PolicyCookies | None = None) -> None:
        self._bpf = bpf
        #: rule sets <-> the cookies written into policy_value.cookie (workbench/datapath/cookies.py)
        self.cookies = cookies if cookies is not None else PolicyCookies()
        self._policy = bpf[b"policy"]
        self._state = bpf[b"policy_state"]
        self._enforce = bpf[b"policy_enforce"]
        self.capacity = capacity
        self.enforce_capacity = enforce_capacity
        self.lab = lab
        self._rules: dict[Slot, tuple[str, ...]] = {}
        # (generation, slot -> key) of the active generation as this writer left
        # it: the next apply needs no scan of the map. Dropped when the active
        # generation is not the one this writer switched to (another writer).
        self._cache: tuple[int, dict[Slot, Any]] | None = None
        self.last_apply_timing: dict[str, float] = {}
        # one writer at a time: apply() and the live edits read-modify-write generations
        self._lock = threading.RLock()

    # -- reading ---------------------------------------------------------------------------
    def active_generation(self) -> int:
        return int(self._state[self._state.Key(0)].generation)

    @staticmethod
    def _slot_of(key: Any) -> Slot:
        direction: Direction = "egress" if key.direction == abi.DIR_EGRESS else "ingress"
        proto = int(key.proto) if key.prefixlen > abi.POLICY_PREFIX_IDENTITY else abi.PROTO_ANY
        prefix = max(0, int(key.prefixlen) - abi.POLICY_PREFIX_PROTO) if proto else 0
        port = int.from_bytes(int(key.dport).to_bytes(2, "little"), "big") if proto else 0
        return Slot(int(key.ep_id), direction, int(key.identity), proto, port, prefix)

    def _read(self, generation: int) -> dict[Slot, tuple[Any, Any]]:
        """Slot -> (BCC key, BCC value) of one generation."""
        return {self._slot_of(key): (key, value) for key, value in self._policy.items()
                if key.generation == generation}

    def _scan_keys(self) -> dict[int, dict[Slot, Any]]:
        """generation -> slot -> BCC key, from one pass over the keys (no value lookups)."""
        found: dict[int, dict[Slot, Any]] = {}
        for key in self._policy.keys():
            found.setdefault(int(key.generation), {})[self._slot_of(key)] = key
        return found

    def _read_enforced(self, generation: int) -> set[tuple[int, str]]:
        return {(int(k.ep_id), "egress" if k.direction == abi.DIR_EGRESS else "ingress")
                for k in self._enforce.keys() if k.generation == generation}

    def enforced(self) -> set[tuple[int, str]]:
        """(ep_id, direction) pairs that are default-deny in the active policy."""
        return self._read_enforced(self.active_generation())

    def current(self) -> list[PolicyEntry]:
        """The active policy map as PolicyEntry objects, one per key, as written (apply() recreates it)."""
        return [PolicyEntry(slot.ep_id, slot.direction, slot.identity, slot.protocol, slot.port, slot.port_prefix,
                            deny=bool(v.deny), proxy_port=int(v.proxy_port), rules=self._rules_of(slot, v),
                            shadowed=bool(v.flags & abi.POLICY_SHADOWED))
                for slot, (_, v) in self._read(self.active_generation()).items()]

    def entries(self) -> pd.DataFrame:
        """The active policy map, one row per key, with its packet/byte counters.

        ``packets``/``bytes`` count the first packets of the connections each entry
        decided (established connections are not looked up again). Counters carry
        over an apply for keys that stay.
        """
        rows = []
        for slot, (_, v) in sorted(self._read(self.active_generation()).items(),
                                   key=lambda kv: (kv[0].ep_id, kv[0].direction, kv[0].identity,
                                                   kv[0].protocol, kv[0].port)):
            rows.append({
                "ep_id": slot.ep_id, "direction": slot.direction, "identity": slot.identity,
                "protocol": abi.POLICY_PROTOCOL_NAMES.get(slot.protocol, str(slot.protocol)),
                "port": slot.port, "port_end": slot.last_port, "port_prefix": slot.port_prefix,
                "action": "deny" if v.deny else "allow", "shadowed": bool(v.flags & abi.POLICY_SHADOWED),
                "match_type": abi.MATCH_TYPE_NAMES.get(int(v.match_type), str(v.match_type)),
                "proxy_port": int(v.proxy_port), "packets": int(v.packets), "bytes": int(v.bytes),
                "rules": list(self._rules_of(slot, v)),
            })
        return pd.DataFrame(rows, columns=ENTRY_COLUMNS)

    def _rules_of(self, slot: Slot, value: Any) -> tuple[str, ...]:
        """The entry's rules as written by this writer, else (a restarted agent) what its cookie names."""
        rules = self._rules.get(slot)
        return rules if rules is not None else self.cookies.rules_of(int(value.cookie))

    # -- writing ---------------------------------------------------------------------------
    def _key(self, generation: int, slot: Slot) -> Any:
        dport_be = int.from_bytes(slot.port.to_bytes(2, "big"), "little") if slot.protocol else 0
        return self._policy.Key(slot.prefixlen, generation, abi.DIRECTIONS[slot.direction], slot.ep_id,
                                slot.identity, slot.protocol, 0, dport_be)

    def _refuse_if_too_big(self, new: int, active: int, enforced: int) -> None:
        if new + active > self.capacity:
            raise ValidationError(
                f"policy map of lab {self.lab} is full: this policy needs {new} entries and the active one "
                f"holds {active} during the swap, the map holds at most {self.capacity}",
                hint="raise it with Datapath(lab, node_netns, policy_max=N) (cflag -DPOLICY_MAX=N); "
                     "the pinned map keeps its size until the lab is recreated",
            )
        if enforced * 2 > self.enforce_capacity:
            raise ValidationError(
                f"policy_enforce map of lab {self.lab} holds at most {self.enforce_capacity // 2} "
                f"(endpoint, direction) pairs per generation, this policy selects {enforced}",
                hint="raise it with Datapath(..., enforce_max=N) (cflag -DENFORCE_MAX=N)",
            )

    def _delete_keys(self, keys: Iterable[Any]) -> None:
        for key in keys:
            try:
                del self._policy[key]
            except KeyError:
                pass

    def _delete_enforce(self, generation: int) -> None:
        for ekey in [k for k in self._enforce.keys() if k.generation == generation]:
            try:
                del self._enforce[ekey]
            except KeyError:
                pass

    def apply(self, entries: Sequence[PolicyEntry], enforced: AbstractSet[tuple[int, str]]) -> None:
        """Make ``entries`` the policy, atomically for every packet.

        Each entry is one map key, written as it is: plan them with
        :func:`workbench.policy.compiler.map_entries` (a compiled policy's
        entries already are). ``enforced`` lists the (ep_id, "ingress"/"egress") pairs selected by any
        policy: those are default-deny in that direction. Everything is written
        into the inactive generation, then one array update switches the
        programs over, then the old generation is deleted. On any failure the
        inactive generation is wiped and the previous policy stays in force.
        """
        with self._lock:
            self._apply(entries, enforced)

    def _apply(self, entries: Sequence[PolicyEntry], enforced: AbstractSet[tuple[int, str]]) -> None:
        slots = check_slots(entries)
        for ep_id, direction in enforced:
            if direction not in abi.DIRECTIONS or not 0 <= ep_id <= 0xFFFF:
                raise ValidationError(f"enforced pair ({ep_id}, {direction!r}) needs an endpoint id "
                                      "0-65535 and ingress or egress")
        started = time.perf_counter()
        active = self.active_generation()
        target = 1 - active
        if self._cache is not None and self._cache[0] == active:
            current = self._cache[1]
        else:
            by_generation = self._scan_keys()
            current = by_generation.get(active, {})
            # leftovers of an apply that crashed half-way
            self._delete_keys(by_generation.get(target, {}).values())
        self._delete_enforce(target)
        self._refuse_if_too_big(len(slots), len(current), len(enforced))
        named = attribution(slots)
        cookies = dict(zip(slots, self.cookies.cookies(named[s] for s in slots), strict=True))
        written: list[Any] = []
        try:
            for slot, entry in slots.items():
                leaf = self._policy.Leaf()
                leaf.deny = int(entry.deny)
                leaf.cookie = cookies[slot]
                leaf.match_type = abi.MATCH_TYPES[entry.match_type]
                leaf.proxy_port = entry.proxy_port
                leaf.flags = abi.POLICY_SHADOWED if entry.shadowed else 0
                old_key = current.get(slot)
                if old_key is not None:  # counters of keys that stay carry over
                    try:
                        old = self._policy[old_key]
                        leaf.packets, leaf.bytes = old.packets, old.bytes
                    except KeyError:
                        pass
                key = self._key(target, slot)
                self._policy[key] = leaf
                written.append(key)
            for ep_id, direction in enforced:
                ekey = self._enforce.Key(ep_id, target, abi.DIRECTIONS[direction])
                self._enforce[ekey] = self._enforce.Leaf(1)
        except Exception as err:
            self._delete_keys(written)
            self._delete_enforce(target)
            code = getattr(err, "errno", None)
            reason = "the kernel refused an entry (map full?)" if code in (errno.ENOSPC, errno.E2BIG, None) else str(err)
            raise ValidationError(
                f"policy apply to lab {self.lab} failed, previous policy still in force: {reason}: {err}",
                hint="raise the map size with Datapath(..., policy_max=N) if it is full",
            ) from err
        state = self._state.Leaf()
        state.generation = target
        self._state[self._state.Key(0)] = state  # the switch: one array update
        switched = time.perf_counter()
        time.sleep(OLD_GENERATION_GRACE_S)
        self._delete_keys(current.values())
        self._delete_enforce(active)
        self._cache = (target, dict(zip(slots, written, strict=True)))
        self._rules = {slot: entry.rules for slot, entry in slots.items() if entry.rules}
        #: seconds from apply() being called until the new policy was in force, and in total
        self.last_apply_timing = {"effective_s": switched - started, "total_s": time.perf_counter() - started,
                                  "entries": float(len(slots))}

    # -- live edits ------------------------------------------------------------------------
    def edit(self, plan: Callable[[list[PolicyEntry]], tuple[Sequence[PolicyEntry], EditResult]]) -> EditResult:
        """Run ``plan`` on the active entries and apply what it returns; returns the plan's result.

        Read, plan and swap happen under the writer's lock, and the swap is an
        :meth:`apply` (same enforcement, counters of keys that stay carry over),
        so a live edit cannot interleave with another. The plan decides the
        slots: :func:`workbench.policy.compiler.live_edit` makes one. Nothing is
        written when the plan returns the entries it was given.
        """
        with self._lock:
            current = self.current()
            entries, result = plan(current)
            if set(entries) != set(current):
                self._apply(entries, self.enforced())
            return result
