"""Typed, validated policy rules: what both CiliumNetworkPolicy and NetworkPolicy become.

A :class:`PolicyDocument` holds one or more :class:`PolicySpec` (a subject
selector, the directions it enforces, and its rules). Each :class:`PolicyRule`
is "these peers, on these ports, are allowed (or denied) in this direction".
Namespacing is already applied to every selector here, so the compiler only
matches labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.lab.model import Direction
from workbench.policy.cidr import CIDRRule
from workbench.policy.fqdn import FqdnSelector
from workbench.policy.l7 import HttpRule
from workbench.policy.ports import PortRange
from workbench.policy.selectors import LabelSelector

CNP_KIND = "CiliumNetworkPolicy"
CCNP_KIND = "CiliumClusterwideNetworkPolicy"
KNP_KIND = "NetworkPolicy"

# Entities a rule may name; "cluster" and "world" expand at compile time.
ENTITIES = ("all", "world", "world-ipv4", "cluster", "host", "health", "remote-node")


@dataclass(frozen=True)
class Peers:
    """The L3 side of a rule: the union of endpoint selectors, entities, CIDRs and DNS names.

    ``fqdns`` (CiliumNetworkPolicy ``toFQDNs``) select the identities of
    addresses learned from DNS answers (:mod:`workbench.policy.fqdn`); Cilium
    allows no other L3 selector next to them in one rule.
    """

    selectors: tuple[LabelSelector, ...] = ()
    entities: tuple[str, ...] = ()
    cidrs: tuple[CIDRRule, ...] = ()
    fqdns: tuple[FqdnSelector, ...] = ()

    def __str__(self) -> str:
        parts = [f"endpoints({s})" for s in self.selectors]
        parts += [f"entity:{e}" for e in self.entities]
        parts += [f"cidr:{c}" for c in self.cidrs]
        parts += [f"fqdn({f})" for f in self.fqdns]
        return " | ".join(parts) or "<nothing>"


@dataclass(frozen=True)
class PolicyRule:
    """Allow (or deny) ``peers`` on ``ports`` in ``direction``.

    ``peers`` None means any peer (identity 0); empty ``ports`` means any
    protocol and port. ``path`` is where the rule is in its document.
    ``http`` (L7): None for an L3/L4 rule; else the HTTP rules a proxied
    request on ``ports`` must match (the connection is redirected to the proxy).
    ``dns`` (L7, egress only): None when the rule has no DNS rules; else the
    names a DNS query on ``ports`` may ask for (it is redirected to the DNS
    proxy). At most one of ``http`` and ``dns`` is set.
    """

    direction: Direction
    peers: Peers | None
    ports: tuple[PortRange, ...] = ()
    deny: bool = False
    path: str = ""
    http: tuple[HttpRule, ...] | None = None
    dns: tuple[FqdnSelector, ...] | None = None

    def __str__(self) -> str:
        verb = "deny" if self.deny else "allow"
        ports = ",".join(str(p) for p in self.ports) or "any port"
        peers = "any peer" if self.peers is None else str(self.peers)
        l7 = "" if self.http is None else " with " + " | ".join(str(h) for h in self.http)
        l7 += "" if self.dns is None else " with " + " | ".join(f"dns({d})" for d in self.dns)
        return f"{verb} {self.direction} {peers} on {ports}{l7}"


@dataclass(frozen=True)
class PolicySpec:
    """Subject selector, the directions it makes default-deny, and its rules."""

    subject: LabelSelector
    enforce: frozenset[Direction]
    rules: tuple[PolicyRule, ...]
    path: str = "spec"


@dataclass(frozen=True)
class PolicyDocument:
    """One validated policy document.

    ``namespace`` is "" for a clusterwide policy. ``key`` ("default/rule1",
    or the bare name when clusterwide) is how entries name their sources.
    """

    kind: str
    api_version: str
    name: str
    namespace: str
    specs: tuple[PolicySpec, ...]
    index: int = 1
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def __str__(self) -> str:
        return f"{self.kind} {self.key}"
