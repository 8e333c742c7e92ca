"""Between PolicyEntry lists and the kernel's policy map.

Pure stages first (no kernel): port ranges -> prefix blocks, entries -> map
slots (one LPM key each, deny wins on equal keys, an allow under a covering
deny stored as deny). Then :class:`PolicyMapWriter`, which writes a complete
policy into the inactive generation and flips one array slot, so no packet is
ever judged by a half-written policy (docs/datapath.md, The policy decision).

The map layout is struct policy_key in bpf/lib/types.h: fixed fields
(generation, direction, endpoint) first, then identity, protocol and the port
in network order, so that "any identity", "any protocol" and port ranges are
all just shorter prefixes.
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from workbench.datapath import abi as layout
from workbench.errors import ValidationError
from workbench.lab.model import Direction, PolicyEntry
from workbench.policy.ports import block_range, port_blocks

# A port given with "any protocol" means these protocols (Cilium's ANY: TCP, UDP, SCTP).
ANY_PROTOCOL_EXPANSION = (6, 17, 132)
# How long the old generation stays after the flip: programs that read the old
# generation number just before the flip finish within microseconds (they run
# under RCU), this is generous.
OLD_GENERATION_GRACE_S = 0.005


@dataclass(frozen=True)
class Slot:
    """One policy-map key, without the generation (that is the writer's business)."""

    ep_id: int
    direction: Direction
    identity: int
    protocol: int
    port: int         # first port of the block (0 when protocol is 0)
    port_prefix: int  # 0..16; 0 when protocol is 0

    @property
    def prefixlen(self) -> int:
        if self.protocol == 0:
            return layout.POLICY_PREFIX_IDENTITY
        return layout.POLICY_PREFIX_PROTO + self.port_prefix

    def covers(self, other: Slot) -> bool:
        """True when every packet that matches ``other`` also matches this slot."""
        if (self.ep_id, self.direction, self.identity) != (other.ep_id, other.direction, other.identity):
            return False
        if self.protocol == 0:
            return True
        if other.protocol != self.protocol or other.port_prefix < self.port_prefix:
            return False
        shift = 16 - self.port_prefix
        return (self.port >> shift) == (other.port >> shift)


@dataclass
class SlotValue:
    deny: bool
    match_type: str
    proxy_port: int = 0
    shadowed: bool = False   # an allow stored as deny because a deny covers it
    rules: tuple[str, ...] = ()


def _check_entry(e: PolicyEntry) -> None:
    where = f"policy entry for endpoint {e.ep_id} {e.direction}"
    if e.direction not in layout.DIRECTIONS:
        raise ValidationError(f"{where}: direction must be ingress or egress, not {e.direction!r}")
    if not 0 <= e.ep_id <= 0xFFFF:
        raise ValidationError(f"{where}: endpoint id must be 0-65535")
    if not 0 <= e.identity <= 0xFFFFFFFF:
        raise ValidationError(f"{where}: identity {e.identity} is not a u32")
    if not 0 <= e.protocol <= 255:
        raise ValidationError(f"{where}: protocol {e.protocol} is not 0-255")
    if not 0 <= e.port_prefix <= 16 or not 0 <= e.port <= 65535:
        raise ValidationError(f"{where}: port {e.port}/{e.port_prefix} must be 0-65535 with 0-16 prefix bits")
    if not 0 <= e.proxy_port <= 65535:
        raise ValidationError(f"{where}: proxy port {e.proxy_port} must be 0-65535")


def to_slots(entries: Iterable[PolicyEntry]) -> dict[Slot, SlotValue]:
    """PolicyEntry list -> map slots, with Cilium's precedence applied.

    - a port with protocol 0 (ANY) becomes one slot per TCP, UDP, SCTP;
    - equal keys merge: deny wins, rules are united;
    - an allow lying under a covering deny (same endpoint, direction and
      identity, shorter prefix) is stored as deny, because the LPM lookup would
      otherwise return the longer allow and deny would not win.

    Example::

        >>> from workbench.lab.model import PolicyEntry
        >>> slots = to_slots([PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True),
        ...                   PolicyEntry(1, "ingress", 300, 6, 80, 16)])
        >>> sorted((s.protocol, v.deny, v.shadowed) for s, v in slots.items())
        [(0, True, False), (6, True, True)]
    """
    slots: dict[Slot, SlotValue] = {}
    for e in entries:
        _check_entry(e)
        protocols = [e.protocol]
        if e.protocol == 0 and e.port_prefix > 0:
            protocols = list(ANY_PROTOCOL_EXPANSION)
        for proto in protocols:
            prefix = e.port_prefix if proto else 0
            port = block_range(e.port, prefix)[0] if proto else 0
            slot = Slot(e.ep_id, e.direction, e.identity, proto, port, prefix)
            match_type = replace(e, protocol=proto).match_type
            old = slots.get(slot)
            if old is None:
                slots[slot] = SlotValue(e.deny, match_type, 0 if e.deny else e.proxy_port, False, e.rules)
                continue
            old.rules = tuple(sorted(set(old.rules) | set(e.rules)))
            if e.deny and not old.deny:
                old.deny, old.proxy_port = True, 0
            elif not e.deny and not old.deny:
                old.proxy_port = old.proxy_port or e.proxy_port

    denies: dict[tuple[int, str, int], list[Slot]] = {}
    for slot, value in slots.items():
        if value.deny:
            denies.setdefault((slot.ep_id, slot.direction, slot.identity), []).append(slot)
    for slot, value in slots.items():
        if value.deny:
            continue
        for d in denies.get((slot.ep_id, slot.direction, slot.identity), ()):
            if d.covers(slot):
                value.deny, value.shadowed, value.proxy_port = True, True, 0
                break
    return slots


def slots_to_entries(slots: dict[Slot, SlotValue]) -> list[PolicyEntry]:
    """Back to PolicyEntry (a shadowed slot becomes the allow it was written as)."""
    return [
        PolicyEntry(s.ep_id, s.direction, s.identity, s.protocol, s.port, s.port_prefix,
                    deny=v.deny and not v.shadowed, proxy_port=v.proxy_port, rules=v.rules)
        for s, v in slots.items()
    ]


ENTRY_COLUMNS = ["ep_id", "direction", "identity", "protocol", "port", "port_end", "port_prefix",
                 "action", "shadowed", "match_type", "proxy_port", "packets", "bytes", "rules"]


class PolicyMapWriter:
    """Writes policy into the pinned policy map of one lab, generation by generation.

    Obtained from :meth:`workbench.datapath.loader.Datapath.policy_writer`.

    Example::

        >>> w = datapath.policy_writer()                                 # doctest: +SKIP
        >>> w.apply([PolicyEntry(3, "ingress", 300, 6, 80, 16)], {(3, "ingress")})  # doctest: +SKIP
        >>> w.deny(3, "ingress", identity=301)                           # doctest: +SKIP
        >>> w.entries()[["ep_id", "identity", "port", "action", "packets"]]  # doctest: +SKIP
    """

    def __init__(self, bpf: Any, capacity: int, enforce_capacity: int, lab: str) -> None:
        self._bpf = bpf
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
        direction: Direction = "egress" if key.direction == layout.DIR_EGRESS else "ingress"
        proto = int(key.proto) if key.prefixlen > layout.POLICY_PREFIX_IDENTITY else 0
        prefix = max(0, int(key.prefixlen) - layout.POLICY_PREFIX_PROTO) if proto else 0
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
        return {(int(k.ep_id), "egress" if k.direction == layout.DIR_EGRESS else "ingress")
                for k in self._enforce.keys() if k.generation == generation}

    def _read_slots(self, generation: int) -> dict[Slot, SlotValue]:
        out: dict[Slot, SlotValue] = {}
        for slot, (_, v) in self._read(generation).items():
            shadowed = bool(v.flags & layout.POLICY_SHADOWED)
            out[slot] = SlotValue(bool(v.deny), layout.MATCH_TYPE_NAMES.get(int(v.match_type), "none"),
                                  int(v.proxy_port), shadowed, self._rules.get(slot, ()))
        return out

    def enforced(self) -> set[tuple[int, str]]:
        """(ep_id, direction) pairs that are default-deny in the active policy."""
        return self._read_enforced(self.active_generation())

    def current(self) -> list[PolicyEntry]:
        """The active policy as PolicyEntry objects (what apply() would need to recreate it)."""
        return slots_to_entries(self._read_slots(self.active_generation()))

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
            first, last = block_range(slot.port, slot.port_prefix) if slot.protocol else (0, 0)
            rows.append({
                "ep_id": slot.ep_id, "direction": slot.direction, "identity": slot.identity,
                "protocol": layout.PROTOCOL_NAMES.get(slot.protocol, "ANY" if not slot.protocol else str(slot.protocol)),
                "port": first, "port_end": last if slot.protocol else 0, "port_prefix": slot.port_prefix,
                "action": "deny" if v.deny else "allow", "shadowed": bool(v.flags & layout.POLICY_SHADOWED),
                "match_type": layout.MATCH_TYPE_NAMES.get(int(v.match_type), "none"),
                "proxy_port": int(v.proxy_port), "packets": int(v.packets), "bytes": int(v.bytes),
                "rules": list(self._rules.get(slot, ())),
            })
        return pd.DataFrame(rows, columns=ENTRY_COLUMNS)

    # -- writing ---------------------------------------------------------------------------
    def _key(self, generation: int, slot: Slot) -> Any:
        dport_be = int.from_bytes(slot.port.to_bytes(2, "big"), "little") if slot.protocol else 0
        return self._policy.Key(slot.prefixlen, generation, layout.DIRECTIONS[slot.direction], slot.ep_id,
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

        ``enforced`` lists the (ep_id, "ingress"/"egress") pairs selected by any
        policy: those are default-deny in that direction. Everything is written
        into the inactive generation, then one array update switches the
        programs over, then the old generation is deleted. On any failure the
        inactive generation is wiped and the previous policy stays in force.
        """
        with self._lock:
            self._apply(entries, enforced)

    def _apply(self, entries: Sequence[PolicyEntry], enforced: AbstractSet[tuple[int, str]]) -> None:
        slots = to_slots(entries)
        for ep_id, direction in enforced:
            if direction not in layout.DIRECTIONS or not 0 <= ep_id <= 0xFFFF:
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
        written: list[Any] = []
        try:
            for slot, value in slots.items():
                leaf = self._policy.Leaf()
                leaf.deny = int(value.deny)
                leaf.match_type = layout.MATCH_TYPES[value.match_type]
                leaf.proxy_port = value.proxy_port
                leaf.flags = layout.POLICY_SHADOWED if value.shadowed else 0
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
                ekey = self._enforce.Key(ep_id, target, layout.DIRECTIONS[direction])
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
        self._rules = {slot: value.rules for slot, value in slots.items() if value.rules}
        #: seconds from apply() being called until the new policy was in force, and in total
        self.last_apply_timing = {"effective_s": switched - started, "total_s": time.perf_counter() - started,
                                  "entries": float(len(slots))}

    # -- live edits ------------------------------------------------------------------------
    def _edit(self, add: list[PolicyEntry], drop: Any = None) -> None:
        # Read back the active policy (shadowed slots come back as the allows they
        # were), edit, and swap it in like any apply: the edit cannot leave the
        # map in a state where deny does not win.
        with self._lock:
            entries = self.current()
            if drop is not None:
                entries = [e for e in entries if not drop(e)]
            self._apply(entries + add, self.enforced())

    @staticmethod
    def _entries_for(ep_id: int, direction: Direction, identity: int, protocol: int, port: int,
                     end_port: int | None, deny: bool, proxy_port: int = 0) -> list[PolicyEntry]:
        if protocol == 0 and port == 0 and end_port is None:
            return [PolicyEntry(ep_id, direction, identity, 0, 0, 0, deny=deny, rules=("live-edit",))]
        last = port if end_port is None else end_port
        blocks = port_blocks(port, last) if (port or end_port is not None) else [(0, 0)]
        return [PolicyEntry(ep_id, direction, identity, protocol, p, prefix, deny=deny,
                            proxy_port=proxy_port, rules=("live-edit",)) for p, prefix in blocks]

    def allow(self, ep_id: int, direction: Direction, identity: int = 0, protocol: int = 0, port: int = 0,
              end_port: int | None = None, proxy_port: int = 0) -> None:
        """Add an allow entry to the live policy; the next new connection sees it.

        ``identity`` 0 = any peer, ``protocol`` 0 = any, ``port``..``end_port`` a range.
        Example: ``w.allow(3, "ingress", identity=300, protocol=6, port=80)``.
        """
        self._edit(self._entries_for(ep_id, direction, identity, protocol, port, end_port, False, proxy_port))

    def deny(self, ep_id: int, direction: Direction, identity: int = 0, protocol: int = 0, port: int = 0,
             end_port: int | None = None) -> None:
        """Add a deny entry to the live policy (deny wins over any allow it covers)."""
        self._edit(self._entries_for(ep_id, direction, identity, protocol, port, end_port, True))

    def remove(self, ep_id: int, direction: Direction, identity: int = 0, protocol: int = 0, port: int = 0,
               end_port: int | None = None) -> int:
        """Remove the entries with exactly these keys (allow or deny); returns how many map keys went.

        Keys are compared as written: a port with protocol 0 (ANY) removes its
        TCP, UDP and SCTP keys, a range removes its prefix blocks.
        """
        wanted = set(to_slots(self._entries_for(ep_id, direction, identity, protocol, port, end_port, False)))

        def match(e: PolicyEntry) -> bool:
            return Slot(e.ep_id, e.direction, e.identity, e.protocol, e.port, e.port_prefix) in wanted

        with self._lock:
            gone = sum(1 for e in self.current() if match(e))
            if gone:
                self._edit([], match)
        return gone
