"""What the active policy says about one connection, without sending a packet.

The meaning the datapath implements (docs/policy.md): a deny that matches wins; any
matching allow allows; an enforced direction without a match drops; a
direction no policy selects passes. `connectivity test` uses this to know
which probes should pass.
"""

from __future__ import annotations

import ipaddress

from workbench.lab.model import ID_WORLD, PROTOCOLS, Direction, PolicyEntry
from workbench.policy.compiler import CompiledPolicy
from workbench.policy.ports import block_range


def _matches(entry: PolicyEntry, identity: int, protocol: int, port: int) -> bool:
    if entry.identity not in (0, identity):
        return False
    if entry.protocol == 0:
        return True
    if entry.protocol != protocol:
        return False
    first, last = block_range(entry.port, entry.port_prefix)
    return first <= port <= last


def direction_verdict(compiled: CompiledPolicy, ep_id: int, direction: Direction, peer_identity: int,
                      protocol: str, port: int) -> str:
    """"allow", "deny" (explicit, 181), "drop" (default deny, 133) or "pass" (not enforced)."""
    proto = PROTOCOLS[protocol.upper()]
    hits = [e for e in compiled.entries_for(ep_id, direction) if _matches(e, peer_identity, proto, port)]
    if any(e.deny for e in hits):
        return "deny"
    if hits:
        return "allow"
    return "drop" if (ep_id, direction) in compiled.enforced else "pass"


def cidr_identity(compiled: CompiledPolicy, address: str) -> int:
    """The identity the ipcache gives an outside address: its most specific policy prefix, else world."""
    ip = ipaddress.IPv4Address(address)
    best: tuple[int, int] | None = None
    for prefix, identity in compiled.cidr_identities.items():
        net = ipaddress.IPv4Network(prefix)
        if ip in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, identity)
    return best[1] if best else ID_WORLD


def connection_allowed(compiled: CompiledPolicy, src: tuple[int, int] | None, dst: tuple[int, int] | None,
                       protocol: str, port: int, *, src_identity: int = ID_WORLD,
                       dst_identity: int = ID_WORLD) -> bool:
    """Would a new connection pass both the source's egress and the destination's ingress?

    ``src``/``dst`` are (endpoint id, identity) for pods, None for addresses
    outside the lab (then ``src_identity``/``dst_identity`` say who they are).

    Example::

        >>> connection_allowed(compiled, (3, 258), (1, 257), "TCP", 80)   # doctest: +SKIP
        True
    """
    peer_src = src[1] if src else src_identity
    peer_dst = dst[1] if dst else dst_identity
    if src and direction_verdict(compiled, src[0], "egress", peer_dst, protocol, port) in ("deny", "drop"):
        return False
    if dst and direction_verdict(compiled, dst[0], "ingress", peer_src, protocol, port) in ("deny", "drop"):
        return False
    return True
