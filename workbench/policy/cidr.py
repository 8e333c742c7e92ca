"""CIDR selectors and the local identities the ipcache gives their prefixes.

Every prefix a policy mentions (also ``except`` prefixes) gets its own
identity in Cilium's local scope (``1 << 24 | n``), labelled
``cidr:<prefix>`` and ``reserved:world``. The datapath puts these prefixes in
its LPM ipcache, so an address resolves to the identity of the longest
mentioned prefix that contains it, and to world (2) when none does. A CIDR
selector with excepts then selects the identities whose prefix lies inside
its CIDR and outside every except. A pod's own /32 keeps the pod's identity
(a policy naming it gets no CIDR identity for it), as in Cilium, where a
pod's address is known by its endpoint, not by a policy's prefix.

Example::

    >>> rule = CIDRRule(parse_cidr(DocRef(1), "x", "10.0.0.0/8"), (parse_cidr(DocRef(1), "y", "10.1.0.0/16"),))
    >>> ids = allocate_cidr_identities([rule])
    >>> sorted(ids.items())
    [('0.0.0.0/0', 2), ('10.0.0.0/8', 16777217), ('10.1.0.0/16', 16777218)]
    >>> rule.selects("10.0.0.0/8"), rule.selects("10.1.0.0/16")
    (True, False)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from workbench.lab.model import ID_WORLD
from workbench.policy.fields import DocRef, type_name

LOCAL_IDENTITY_SCOPE = 1 << 24
WORLD_PREFIX = "0.0.0.0/0"


# What a CIDR rule means for pods, as `policy explain` names it.
K8S_IPBLOCK = "k8s ipBlock: pods in range selected"
CILIUM_CIDR = "cilium CIDR: pods never selected"


@dataclass(frozen=True)
class CIDRRule:
    """A CIDR and the sub-prefixes excluded from it.

    ``pods`` says which meaning it has for lab pods: True for a NetworkPolicy
    ``ipBlock`` (Kubernetes: a pod whose IP is in range, minus the excepts, is
    selected), False for CiliumNetworkPolicy CIDR rules (Cilium: they describe
    peers outside the cluster; a pod is never selected by its address).
    """

    cidr: ipaddress.IPv4Network
    excepts: tuple[ipaddress.IPv4Network, ...] = ()
    pods: bool = False

    @property
    def meaning(self) -> str:
        return K8S_IPBLOCK if self.pods else CILIUM_CIDR

    def prefixes(self) -> list[ipaddress.IPv4Network]:
        return [self.cidr, *self.excepts]

    def contains(self, address: str) -> bool:
        """Whether an address is in the CIDR and in none of its excepts."""
        ip = ipaddress.IPv4Address(address)
        return ip in self.cidr and not any(ip in e for e in self.excepts)

    def selects(self, prefix: str) -> bool:
        """Whether the identity of ``prefix`` (a mentioned prefix, or 0.0.0.0/0 = world) is selected."""
        net = ipaddress.IPv4Network(prefix)
        if net.prefixlen == 0:
            # World (2) stands for addresses in no mentioned prefix: only a /0 contains them all.
            return self.cidr.prefixlen == 0
        return net.subnet_of(self.cidr) and not any(net.subnet_of(e) for e in self.excepts)

    def __str__(self) -> str:
        if not self.excepts:
            return str(self.cidr)
        return f"{self.cidr} except {','.join(str(e) for e in self.excepts)}"


def parse_cidr(doc: DocRef, path: str, value: Any) -> ipaddress.IPv4Network:
    """An IPv4 prefix in canonical form ("10.0.0.0/8"); host bits set or IPv6 are refused."""
    if not isinstance(value, str):
        raise doc.error(path, f"must be a CIDR string like 10.0.0.0/8, got {type_name(value)} {value!r}")
    if "/" not in value:
        raise doc.error(path, f"{value!r} is not a CIDR: add the prefix length, e.g. {value}/32")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise doc.error(path, f"{value!r} is not a valid CIDR") from None
    if net.version != 4:
        raise doc.error(path, f"IPv6 prefix {value!r} is not supported (the lab is IPv4 only)")
    if str(net) != value.strip():
        raise doc.error(path, f"{value!r} has host bits set; did you mean {net}?")
    assert isinstance(net, ipaddress.IPv4Network)
    return net


def parse_excepts(doc: DocRef, path: str, cidr: ipaddress.IPv4Network,
                  items: list[tuple[str, Any]]) -> tuple[ipaddress.IPv4Network, ...]:
    """``except`` entries: each must lie strictly inside ``cidr``."""
    excepts = []
    for item_path, item in items:
        net = parse_cidr(doc, item_path, item)
        if not net.subnet_of(cidr) or net == cidr:
            raise doc.error(item_path, f"except {net} is not inside the CIDR {cidr}")
        excepts.append(net)
    return tuple(excepts)


def allocate_cidr_identities(rules: Iterable[CIDRRule], previous: Mapping[str, int] | None = None,
                             exclude: Iterable[str] = (), taken: Iterable[int] = ()) -> dict[str, int]:
    """Prefix -> identity for every prefix in ``rules``, plus 0.0.0.0/0 -> world.

    Deterministic: prefixes are numbered in address order. Prefixes already in
    ``previous`` keep their identity, so recompiling after a change does not
    renumber what the datapath already has. Prefixes in ``exclude`` (the pods'
    own /32s, which keep their pod identity in the ipcache, and the addresses
    learned from DNS, which have an fqdn identity) get none. Numbers in
    ``taken`` (fqdn identities) are never handed out.
    """
    prefixes = {str(p) for rule in rules for p in rule.prefixes()}
    prefixes.discard(WORLD_PREFIX)
    prefixes -= set(exclude)
    taken = set(taken)
    result: dict[str, int] = {WORLD_PREFIX: ID_WORLD}
    previous = previous or {}
    # Never hand a retired prefix's number to a new prefix in the same swap.
    next_id = max((n for n in previous.values() if n >= LOCAL_IDENTITY_SCOPE), default=LOCAL_IDENTITY_SCOPE) + 1
    for prefix in sorted(prefixes, key=lambda p: (ipaddress.IPv4Network(p).network_address,
                                                  ipaddress.IPv4Network(p).prefixlen)):
        if prefix in previous and previous[prefix] >= LOCAL_IDENTITY_SCOPE and previous[prefix] not in taken:
            result[prefix] = previous[prefix]
        else:
            while next_id in taken:
                next_id += 1
            result[prefix] = next_id
            next_id += 1
    return result


def cidr_labels(prefix: str) -> tuple[str, ...]:
    """Labels of a CIDR identity, as Cilium shows them."""
    if prefix == WORLD_PREFIX:
        return ("reserved:world",)
    return (f"cidr:{prefix}", "reserved:world")
