"""Stages 2-3: typed rules compiled against a star-wars-like lab into policy-map entries.

Every scenario is checked two ways: a most-specific-match lookup over the
emitted entries (what the datapath does: peer identity before identity 0,
then protocol, then the longest port prefix) and an independent semantic
oracle (any matching deny -> deny; else any matching allow -> allow; else
default-deny if enforced). Both must give the expected verdict.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from workbench.errors import ValidationError
from workbench.lab.identity import IdentityAllocator, identity_labels
from workbench.lab.model import Endpoint, PolicyEntry
from workbench.policy import CompiledPolicy, compile_policies, diff, explain, explain_frame, load_documents
from workbench.policy.cidr import LOCAL_IDENTITY_SCOPE
from workbench.policy.compiler import live_edit, map_entries
from workbench.policy.ports import block_range

NAMESPACES = {
    "default": {"kubernetes.io/metadata.name": "default"},
    "other": {"kubernetes.io/metadata.name": "other", "team": "spies"},
}
PODS = [  # (ep id, pod, namespace, labels)
    (1, "deathstar-1", "default", {"org": "empire", "class": "deathstar"}),
    (2, "deathstar-2", "default", {"org": "empire", "class": "deathstar"}),
    (3, "tiefighter", "default", {"org": "empire", "class": "tiefighter"}),
    (4, "xwing", "default", {"org": "alliance", "class": "xwing"}),
    (5, "spy", "other", {"org": "empire", "class": "tiefighter"}),
]


@dataclass
class Lab:
    endpoints: list[Endpoint]
    identity_of: dict[str, int]   # pod -> identity

    def ep(self, pod: str) -> Endpoint:
        return next(e for e in self.endpoints if e.pod == pod)


def make_lab() -> Lab:
    alloc = IdentityAllocator()
    endpoints = []
    for ep_id, pod, namespace, labels in PODS:
        ident = alloc.allocate(identity_labels(labels, namespace, NAMESPACES[namespace]))
        endpoints.append(Endpoint(ep_id, pod, namespace, f"10.200.0.{ep_id}", ident.id, ident.labels, labels,
                                  f"wb-t-{pod}", f"lxc{ep_id}"))
    return Lab(endpoints, {e.pod: e.identity for e in endpoints})


LAB = make_lab()
IDENTITIES = IdentityAllocator()
for _, _pod, _ns, _labels in PODS:
    IDENTITIES.allocate(identity_labels(_labels, _ns, NAMESPACES[_ns]))


def compile_text(text: str, **kwargs: Any) -> CompiledPolicy:
    return compile_policies(load_documents(text), LAB.endpoints, IDENTITIES.all(), NAMESPACES, **kwargs)


def peer_identity(compiled: CompiledPolicy, peer: str) -> int:
    """A pod name, a reserved name, or an IPv4 address resolved through the CIDR ipcache (LPM)."""
    if peer in LAB.identity_of:
        return LAB.identity_of[peer]
    reserved = {"host": 1, "world": 2, "health": 4}
    if peer in reserved:
        return reserved[peer]
    addr = ipaddress.IPv4Address(peer)
    best = max((ipaddress.IPv4Network(p) for p in compiled.cidr_identities if addr in ipaddress.IPv4Network(p)),
               key=lambda n: n.prefixlen)
    return compiled.cidr_identities[str(best)]


PROTO = {"TCP": 6, "UDP": 17}


def _matches(entry: PolicyEntry, identity: int, protocol: int, port: int) -> bool:
    if entry.identity not in (0, identity) or entry.protocol not in (0, protocol):
        return False
    if entry.protocol == 0:
        return True
    first, last = block_range(entry.port, entry.port_prefix)
    return first <= port <= last


def lookup(compiled: CompiledPolicy, pod: str, direction: str, peer: str, proto: str, port: int) -> str:
    """The datapath's view: the most specific matching entry decides."""
    ep = LAB.ep(pod)
    identity, protocol = peer_identity(compiled, peer), PROTO[proto]
    hits = [e for e in compiled.entries_for(ep.id, direction)  # type: ignore[arg-type]
            if _matches(e, identity, protocol, port)]
    if hits:
        best = max(hits, key=lambda e: (e.identity != 0, e.protocol != 0, e.port_prefix))
        same = [e for e in hits if (e.identity != 0, e.protocol != 0, e.port_prefix) ==
                (best.identity != 0, best.protocol != 0, best.port_prefix)]
        assert len(same) == 1, f"ambiguous lookup: {same}"
        return "deny" if best.deny else "allow"
    return "drop" if (ep.id, direction) in compiled.enforced else "pass"


def lookup_either(compiled: CompiledPolicy, pod: str, direction: str, peer: str, proto: str, port: int) -> str:
    """bpf/lib/policy.h's view: two LPM lookups (peer identity, identity 0); a deny from either wins."""
    ep = LAB.ep(pod)
    identity, protocol = peer_identity(compiled, peer), PROTO[proto]
    hits = [e for e in compiled.entries_for(ep.id, direction)  # type: ignore[arg-type]
            if _matches(e, identity, protocol, port)]
    best = [max(group, key=lambda e: (e.protocol != 0, e.port_prefix))
            for group in ([e for e in hits if e.identity != 0], [e for e in hits if e.identity == 0]) if group]
    if any(e.deny for e in best):
        return "deny"
    if best:
        return "allow"
    return "drop" if (ep.id, direction) in compiled.enforced else "pass"


def oracle(compiled: CompiledPolicy, pod: str, direction: str, peer: str, proto: str, port: int) -> str:
    """The policy's meaning: deny wins, allows union, enforced directions default-deny."""
    ep = LAB.ep(pod)
    identity, protocol = peer_identity(compiled, peer), PROTO[proto]
    hits = [e for e in compiled.entries_for(ep.id, direction)  # type: ignore[arg-type]
            if _matches(e, identity, protocol, port)]
    if any(e.deny for e in hits):
        return "deny"
    if hits:
        return "allow"
    return "drop" if (ep.id, direction) in compiled.enforced else "pass"


RULE1 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


def cnp(spec: str, name: str = "p", namespace: str = "default", kind: str = "CiliumNetworkPolicy") -> str:
    meta = f"{{name: {name}, namespace: {namespace}}}" if namespace else f"{{name: {name}}}"
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {meta}\nspec:\n{body}\n---\n"


def knp(spec: str, name: str = "np", namespace: str = "default") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return (f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, "
            f"namespace: {namespace}}}\nspec:\n{body}\n---\n")


DS = "endpointSelector: {matchLabels: {class: deathstar}}\n"
XW = "endpointSelector: {matchLabels: {class: xwing}}\n"

# (id, policy YAML, [(pod, direction, peer, proto, port, expected verdict)])
SCENARIOS: list[tuple[str, str, list[tuple[str, str, str, str, int, str]]]] = [
    ("rule1", RULE1, [
        ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "allow"),
        ("deathstar-2", "ingress", "tiefighter", "TCP", 80, "allow"),
        ("deathstar-1", "ingress", "deathstar-2", "TCP", 80, "allow"),
        ("deathstar-1", "ingress", "xwing", "TCP", 80, "drop"),
        ("deathstar-1", "ingress", "tiefighter", "TCP", 443, "drop"),
        ("deathstar-1", "ingress", "tiefighter", "UDP", 80, "drop"),
        ("deathstar-1", "ingress", "spy", "TCP", 80, "drop"),        # same labels, other namespace
        ("deathstar-1", "egress", "xwing", "TCP", 80, "pass"),
        ("xwing", "ingress", "tiefighter", "TCP", 80, "pass"),
    ]),
    ("match-expressions-in", cnp(DS + """
ingress:
- fromEndpoints: [{matchExpressions: [{key: class, operator: In, values: [xwing, tiefighter]}]}]
"""), [("deathstar-1", "ingress", "xwing", "TCP", 1, "allow"), ("deathstar-1", "ingress", "tiefighter", "UDP", 53, "allow"),
       ("deathstar-1", "ingress", "deathstar-2", "TCP", 80, "drop")]),
    ("match-expressions-notin", cnp(DS + """
ingress:
- fromEndpoints: [{matchExpressions: [{key: org, operator: NotIn, values: [empire]}]}]
"""), [("deathstar-1", "ingress", "xwing", "TCP", 80, "allow"), ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "drop"),
       ("deathstar-1", "ingress", "host", "TCP", 80, "drop")]),   # namespace scoping keeps reserved ids out
    ("match-expressions-exists", cnp(DS + """
ingress:
- fromEndpoints: [{matchExpressions: [{key: k8s:org, operator: Exists}]}]
"""), [("deathstar-1", "ingress", "xwing", "TCP", 80, "allow"), ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "allow"),
       ("deathstar-1", "ingress", "spy", "TCP", 80, "drop")]),
    ("match-expressions-doesnotexist", cnp(DS + """
ingress:
- fromEndpoints: [{matchExpressions: [{key: any:class, operator: DoesNotExist}]}]
"""), [("deathstar-1", "ingress", "xwing", "TCP", 80, "drop"), ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "drop")]),
    ("namespace-explicit", cnp(DS + """
ingress:
- fromEndpoints: [{matchLabels: {org: empire, k8s:io.kubernetes.pod.namespace: other}}]
"""), [("deathstar-1", "ingress", "spy", "TCP", 80, "allow"), ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "drop")]),
    ("namespace-policy-in-other-ns", cnp(DS.replace("deathstar", "tiefighter") + """
ingress:
- fromEndpoints: [{}]
""", namespace="other"), [
        ("spy", "ingress", "xwing", "TCP", 80, "drop"),            # {} = all endpoints of the policy's namespace
        ("tiefighter", "ingress", "xwing", "TCP", 80, "pass"),     # subject only in the policy's namespace
    ]),
    ("namespace-by-namespace-labels", cnp(DS + """
ingress:
- fromEndpoints: [{matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: spies}}]
"""), [("deathstar-1", "ingress", "spy", "TCP", 80, "allow"), ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "drop")]),
    ("clusterwide-spans-namespaces", cnp("""
endpointSelector: {matchLabels: {org: empire}}
ingress:
- fromEndpoints: [{matchLabels: {class: tiefighter}}]
""", namespace="", kind="CiliumClusterwideNetworkPolicy"), [
        ("spy", "ingress", "tiefighter", "TCP", 80, "allow"), ("deathstar-1", "ingress", "spy", "TCP", 80, "allow"),
        ("deathstar-1", "ingress", "xwing", "TCP", 80, "drop"), ("xwing", "ingress", "spy", "TCP", 80, "pass")]),
    ("port-range", cnp(DS + """
ingress:
- toPorts: [{ports: [{port: "8080", endPort: 8090, protocol: TCP}]}]
"""), [("deathstar-1", "ingress", "xwing", "TCP", 8079, "drop"), ("deathstar-1", "ingress", "xwing", "TCP", 8080, "allow"),
       ("deathstar-1", "ingress", "xwing", "TCP", 8088, "allow"), ("deathstar-1", "ingress", "xwing", "TCP", 8090, "allow"),
       ("deathstar-1", "ingress", "world", "TCP", 8085, "allow"), ("deathstar-1", "ingress", "xwing", "TCP", 8091, "drop"),
       ("deathstar-1", "ingress", "xwing", "UDP", 8085, "drop")]),
    ("udp", cnp(DS + """
ingress:
- fromEndpoints: [{matchLabels: {class: xwing}}]
  toPorts: [{ports: [{port: "53", protocol: UDP}]}]
"""), [("deathstar-1", "ingress", "xwing", "UDP", 53, "allow"), ("deathstar-1", "ingress", "xwing", "TCP", 53, "drop")]),
    ("any-protocol", cnp(DS + """
ingress:
- fromEndpoints: [{matchLabels: {class: xwing}}]
  toPorts: [{ports: [{port: "53"}]}]
"""), [("deathstar-1", "ingress", "xwing", "UDP", 53, "allow"), ("deathstar-1", "ingress", "xwing", "TCP", 53, "allow"),
       ("deathstar-1", "ingress", "xwing", "TCP", 54, "drop")]),
    ("egress-to-endpoints", cnp(XW + """
egress:
- toEndpoints: [{matchLabels: {class: deathstar}}]
  toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""), [("xwing", "egress", "deathstar-1", "TCP", 80, "allow"), ("xwing", "egress", "tiefighter", "TCP", 80, "drop"),
       ("xwing", "ingress", "tiefighter", "TCP", 80, "pass")]),
    ("cidr-with-except", cnp(XW + """
egress:
- toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
"""), [("xwing", "egress", "192.0.2.10", "TCP", 80, "allow"), ("xwing", "egress", "192.0.2.200", "TCP", 80, "drop"),
       ("xwing", "egress", "198.51.100.1", "TCP", 80, "drop"), ("xwing", "egress", "deathstar-1", "TCP", 80, "drop")]),
    ("cidr-plain-and-world-cidr", cnp(XW + """
egress:
- toCIDR: [0.0.0.0/0]
  toPorts: [{ports: [{port: "443", protocol: TCP}]}]
- toCIDR: [198.51.100.0/24]
"""), [("xwing", "egress", "8.8.8.8", "TCP", 443, "allow"), ("xwing", "egress", "198.51.100.7", "UDP", 9, "allow"),
       ("xwing", "egress", "198.51.100.7", "TCP", 443, "allow"), ("xwing", "egress", "192.0.2.1", "TCP", 80, "drop"),
       ("xwing", "egress", "deathstar-1", "TCP", 443, "drop")]),
    ("entity-world", cnp(XW + """
egress:
- toEntities: [world]
"""), [("xwing", "egress", "192.0.2.1", "TCP", 80, "allow"), ("xwing", "egress", "deathstar-1", "TCP", 80, "drop"),
       ("xwing", "egress", "host", "TCP", 80, "drop")]),
    ("entity-world-covers-cidr-identities", cnp(XW + """
egress:
- toEntities: [world]
""") + cnp(DS + """
egress:
- toCIDR: [192.0.2.0/24]
""", name="q"), [("xwing", "egress", "192.0.2.1", "TCP", 80, "allow"), ("xwing", "egress", "198.51.100.1", "TCP", 80, "allow")]),
    ("entity-cluster", cnp(XW + """
egress:
- toEntities: [cluster]
"""), [("xwing", "egress", "deathstar-1", "TCP", 80, "allow"), ("xwing", "egress", "spy", "UDP", 5, "allow"),
       ("xwing", "egress", "host", "TCP", 80, "allow"), ("xwing", "egress", "192.0.2.1", "TCP", 80, "drop")]),
    ("entity-host", cnp(DS + """
ingress:
- fromEntities: [host]
"""), [("deathstar-1", "ingress", "host", "TCP", 80, "allow"), ("deathstar-1", "ingress", "xwing", "TCP", 80, "drop")]),
    ("entity-all", cnp(DS + """
ingress:
- fromEntities: [all]
  toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""), [("deathstar-1", "ingress", "host", "TCP", 80, "allow"), ("deathstar-1", "ingress", "192.0.2.9", "TCP", 80, "allow"),
       ("deathstar-1", "ingress", "xwing", "TCP", 81, "drop")]),
    ("empty-ingress-rule-denies-all", cnp(DS + """
ingress: [{}]
"""), [("deathstar-1", "ingress", "tiefighter", "TCP", 80, "drop"), ("deathstar-1", "egress", "tiefighter", "TCP", 80, "pass")]),
    ("default-deny-disabled", cnp(DS + """
enableDefaultDeny: {ingress: false}
ingress:
- fromEndpoints: [{matchLabels: {class: xwing}}]
"""), [("deathstar-1", "ingress", "xwing", "TCP", 80, "allow"), ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "pass")]),
    ("deny-wins-over-allow", cnp(DS + """
ingress:
- fromEntities: [all]
ingressDeny:
- fromEndpoints: [{matchLabels: {class: xwing}}]
"""), [("deathstar-1", "ingress", "xwing", "TCP", 80, "deny"), ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "allow")]),
    ("deny-port-over-specific-allow", cnp(DS + """
ingress:
- fromEndpoints: [{matchLabels: {class: xwing}}]
ingressDeny:
- toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""), [("deathstar-1", "ingress", "xwing", "TCP", 80, "deny"), ("deathstar-1", "ingress", "xwing", "TCP", 81, "allow"),
       ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "deny"), ("deathstar-1", "ingress", "tiefighter", "TCP", 81, "drop")]),
    ("deny-l3-over-port-allow", cnp(DS + """
ingress:
- fromEndpoints: [{matchLabels: {class: xwing}}]
  toPorts: [{ports: [{port: "80", protocol: TCP}]}]
""") + cnp(DS + """
ingressDeny:
- fromEndpoints: [{matchLabels: {class: xwing}}]
""", name="deny-xwing"), [("deathstar-1", "ingress", "xwing", "TCP", 80, "deny")]),
    ("deny-range-inside-allowed-range", cnp(DS + """
ingress:
- toPorts: [{ports: [{port: "1000", endPort: 2000, protocol: ANY}]}]
egressDeny:
- toEntities: [world]
  toPorts: [{ports: [{port: "1500", endPort: 1600, protocol: UDP}]}]
ingressDeny:
- fromEndpoints: [{matchLabels: {class: xwing}}]
  toPorts: [{ports: [{port: "1500", endPort: 1600, protocol: UDP}]}]
"""), [("deathstar-1", "ingress", "xwing", "UDP", 1499, "allow"), ("deathstar-1", "ingress", "xwing", "UDP", 1500, "deny"),
       ("deathstar-1", "ingress", "xwing", "UDP", 1600, "deny"), ("deathstar-1", "ingress", "xwing", "TCP", 1550, "allow"),
       ("deathstar-1", "ingress", "tiefighter", "UDP", 1550, "allow"), ("deathstar-1", "egress", "192.0.2.1", "UDP", 1550, "deny"),
       ("deathstar-1", "egress", "192.0.2.1", "UDP", 1700, "drop")]),
    ("egress-deny-only-is-default-deny", cnp(XW + """
egressDeny:
- toEntities: [world]
"""), [("xwing", "egress", "192.0.2.1", "TCP", 80, "deny"), ("xwing", "egress", "deathstar-1", "TCP", 80, "drop")]),
    # Kubernetes NetworkPolicy
    ("knp-pod-selector", knp("""
podSelector: {matchLabels: {class: deathstar}}
ingress:
- from: [{podSelector: {matchLabels: {org: empire}}}]
  ports: [{port: 80}]
"""), [("deathstar-1", "ingress", "tiefighter", "TCP", 80, "allow"), ("deathstar-1", "ingress", "spy", "TCP", 80, "drop"),
       ("deathstar-1", "ingress", "xwing", "TCP", 80, "drop"), ("deathstar-1", "ingress", "tiefighter", "UDP", 80, "drop"),
       ("deathstar-1", "egress", "xwing", "TCP", 80, "pass")]),
    ("knp-namespace-selector", knp("""
podSelector: {matchLabels: {class: deathstar}}
ingress:
- from: [{namespaceSelector: {matchLabels: {team: spies}}}]
"""), [("deathstar-1", "ingress", "spy", "UDP", 9, "allow"), ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "drop")]),
    ("knp-namespace-selector-by-name", knp("""
podSelector: {matchLabels: {class: deathstar}}
ingress:
- from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}}]
"""), [("deathstar-1", "ingress", "xwing", "TCP", 80, "allow"), ("deathstar-1", "ingress", "spy", "TCP", 80, "drop")]),
    ("knp-both-selectors", knp("""
podSelector: {matchLabels: {class: deathstar}}
ingress:
- from: [{namespaceSelector: {}, podSelector: {matchLabels: {class: tiefighter}}}]
"""), [("deathstar-1", "ingress", "spy", "TCP", 80, "allow"), ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "allow"),
       ("deathstar-1", "ingress", "xwing", "TCP", 80, "drop"), ("deathstar-1", "ingress", "host", "TCP", 80, "drop")]),
    ("knp-ipblock-except-egress", knp("""
podSelector: {matchLabels: {class: xwing}}
policyTypes: [Egress]
egress:
- to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.0/28]}}]
  ports: [{port: 5000, endPort: 5003, protocol: UDP}]
"""), [("xwing", "egress", "192.0.2.100", "UDP", 5002, "allow"), ("xwing", "egress", "192.0.2.5", "UDP", 5002, "drop"),
       ("xwing", "egress", "192.0.2.100", "UDP", 5004, "drop"), ("xwing", "ingress", "tiefighter", "TCP", 80, "pass")]),
    ("knp-policy-types-default-ingress-only", knp("""
podSelector: {matchLabels: {class: xwing}}
"""), [("xwing", "ingress", "tiefighter", "TCP", 80, "drop"), ("xwing", "egress", "tiefighter", "TCP", 80, "pass")]),
    ("knp-policy-types-default-with-egress", knp("""
podSelector: {matchLabels: {class: xwing}}
egress:
- to: [{podSelector: {matchLabels: {class: deathstar}}}]
"""), [("xwing", "ingress", "tiefighter", "TCP", 80, "drop"), ("xwing", "egress", "deathstar-2", "TCP", 80, "allow"),
       ("xwing", "egress", "tiefighter", "TCP", 80, "drop")]),
    ("knp-empty-from-allows-all", knp("""
podSelector: {}
ingress: [{}]
"""), [("xwing", "ingress", "spy", "TCP", 80, "allow"), ("xwing", "ingress", "192.0.2.1", "UDP", 1, "allow"),
       ("spy", "ingress", "xwing", "TCP", 80, "pass")]),
    ("knp-ports-only", knp("""
podSelector: {}
policyTypes: [Ingress, Egress]
ingress:
- ports: [{protocol: UDP}]
"""), [("xwing", "ingress", "spy", "UDP", 7, "allow"), ("xwing", "ingress", "spy", "TCP", 7, "drop"),
       ("xwing", "egress", "spy", "UDP", 7, "drop")]),
    ("knp-and-cnp-union", RULE1 + "---\n" + knp("""
podSelector: {matchLabels: {class: deathstar}}
ingress:
- from: [{podSelector: {matchLabels: {class: xwing}}}]
  ports: [{port: 443}]
"""), [("deathstar-1", "ingress", "xwing", "TCP", 443, "allow"), ("deathstar-1", "ingress", "xwing", "TCP", 80, "drop"),
       ("deathstar-1", "ingress", "tiefighter", "TCP", 80, "allow")]),
]


@pytest.mark.parametrize(("text", "checks"), [(t, c) for _, t, c in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_scenario_verdicts(text: str, checks: list[tuple[str, str, str, str, int, str]]) -> None:
    compiled = compile_text(text)
    for pod, direction, peer, proto, port, expected in checks:
        what = f"{pod} {direction} {peer} {port}/{proto}"
        assert oracle(compiled, pod, direction, peer, proto, port) == expected, f"meaning of {what}"
        assert lookup(compiled, pod, direction, peer, proto, port) == expected, f"datapath lookup of {what}"
        assert lookup_either(compiled, pod, direction, peer, proto, port) == expected, f"two-lookup view of {what}"


def test_rule1_entries_exactly() -> None:
    compiled = compile_text(RULE1)
    deathstar, tiefighter = LAB.identity_of["deathstar-1"], LAB.identity_of["tiefighter"]
    assert compiled.enforced == {(1, "ingress"), (2, "ingress")}
    assert {(e.ep_id, e.direction, e.identity, e.protocol, e.port, e.port_prefix, e.deny) for e in compiled.entries} == {
        (ep, "ingress", ident, 6, 80, 16, False) for ep in (1, 2) for ident in (deathstar, tiefighter)}
    assert all(e.rules == ("default/rule1",) for e in compiled.entries)
    assert all(e.match_type == "L3-L4" for e in compiled.entries)
    assert LAB.identity_of["xwing"] not in {e.identity for e in compiled.entries}
    assert compiled.cidr_identities == {"0.0.0.0/0": 2}
    assert compiled.endpoint_names[1] == "default/deathstar-1"


def test_l3_only_and_l4_only_entry_shapes() -> None:
    compiled = compile_text(cnp(DS + """
ingress:
- fromEndpoints: [{matchLabels: {class: xwing}}]
- toPorts: [{ports: [{port: "8080", endPort: 8087, protocol: TCP}]}]
"""))
    xwing = LAB.identity_of["xwing"]
    shapes = {(e.identity, e.protocol, e.port, e.port_prefix, e.match_type) for e in compiled.entries_for(1)}
    assert shapes == {(xwing, 0, 0, 0, "L3-Only"), (0, 6, 8080, 13, "L4-Only")}


def test_any_protocol_expands_to_tcp_and_udp() -> None:
    compiled = compile_text(cnp(DS + """
ingress:
- toPorts: [{ports: [{port: "53", protocol: ANY}]}]
"""))
    assert {(e.protocol, e.port, e.port_prefix) for e in compiled.entries_for(1)} == {(6, 53, 16), (17, 53, 16)}


def test_cidr_identities_are_deterministic_local_and_cover_excepts() -> None:
    text = cnp(XW + """
egress:
- toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
- toCIDR: [198.51.100.0/24]
""")
    first, second = compile_text(text), compile_text(text)
    assert first.cidr_identities == second.cidr_identities == {
        "0.0.0.0/0": 2, "192.0.2.0/24": LOCAL_IDENTITY_SCOPE | 1, "192.0.2.128/25": LOCAL_IDENTITY_SCOPE | 2,
        "198.51.100.0/24": LOCAL_IDENTITY_SCOPE | 3}
    allowed = {e.identity for e in first.entries_for(4, "egress")}
    assert allowed == {LOCAL_IDENTITY_SCOPE | 1, LOCAL_IDENTITY_SCOPE | 3}
    assert first.identity_labels[LOCAL_IDENTITY_SCOPE | 2] == ("cidr:192.0.2.128/25", "reserved:world")


def test_cidr_identities_stay_stable_across_recompiles() -> None:
    before = compile_text(cnp(XW + "egress:\n- toCIDR: [198.51.100.0/24]\n"))
    after = compile_text(cnp(XW + "egress:\n- toCIDR: [10.0.0.0/8, 198.51.100.0/24]\n"),
                         previous_cidr_identities=before.cidr_identities)
    assert after.cidr_identities["198.51.100.0/24"] == before.cidr_identities["198.51.100.0/24"]
    assert after.cidr_identities["10.0.0.0/8"] not in before.cidr_identities.values()


def test_world_entity_includes_every_cidr_identity() -> None:
    compiled = compile_text(cnp(XW + "egress:\n- toEntities: [world]\n") +
                            cnp(DS + "egress:\n- toCIDR: [192.0.2.0/24]\n", name="q"))
    assert {e.identity for e in compiled.entries_for(4, "egress")} == {2, compiled.cidr_identities["192.0.2.0/24"]}


def test_cluster_entity_identities() -> None:
    compiled = compile_text(cnp(XW + "egress:\n- toEntities: [cluster]\n"))
    assert {e.identity for e in compiled.entries_for(4, "egress")} == {1, 4, *LAB.identity_of.values()}


def test_duplicate_entries_merge_their_sources() -> None:
    text = RULE1 + "---\n" + RULE1.replace("rule1", "rule1-copy")
    compiled = compile_text(text)
    assert len(compiled.entries) == 4
    assert all(e.rules == ("default/rule1", "default/rule1-copy") for e in compiled.entries)
    assert len(compiled.entries_from("default/rule1-copy")) == 4


def test_deny_entries_name_the_deny_policy() -> None:
    compiled = compile_text(RULE1 + "---\n" + cnp(DS + """
ingressDeny:
- fromEndpoints: [{matchLabels: {class: tiefighter}}]
""", name="no-tie"))
    tie = LAB.identity_of["tiefighter"]
    entries = {(e.identity, e.protocol, e.port): e for e in compiled.entries_for(1)}
    assert entries[(tie, 6, 80)].deny and entries[(tie, 6, 80)].rules == ("default/no-tie",)
    assert entries[(tie, 0, 0)].deny
    assert not entries[(LAB.identity_of["deathstar-1"], 6, 80)].deny


def test_no_endpoints_selected_means_no_entries() -> None:
    compiled = compile_text(cnp("endpointSelector: {matchLabels: {class: nobody}}\ningress: [{}]\n"))
    assert compiled.entries == [] and compiled.enforced == set()


def test_reserved_selector_is_not_namespaced() -> None:
    compiled = compile_text(cnp(DS + "ingress:\n- fromEndpoints: [{matchLabels: {reserved:host: ''}}]\n"))
    assert {e.identity for e in compiled.entries_for(1)} == {1}


def test_random_policies_lookup_agrees_with_meaning() -> None:
    """resolve_deny: for mixed allow/deny rules the most specific entry is always right.

    This checks deny precedence only: ``oracle()`` reads the compiler's own entries, so it
    cannot notice an entry that is wrong in itself. test_policy_reference.py compares the
    compiled map with a reference written from docs/policy.md instead.
    """
    import random

    rng = random.Random(7)
    peers = ["{fromEntities: [all]}", "{fromEndpoints: [{matchLabels: {class: xwing}}]}",
             "{fromEndpoints: [{matchLabels: {org: empire}}]}", "{fromCIDR: [192.0.2.0/24]}", "{}"]
    ports = ["", '{port: "80", protocol: TCP}', '{port: "0", protocol: UDP}', '{port: "64", endPort: 127}',
             '{port: "80", endPort: 95, protocol: TCP}']
    probes = [(peer, proto, port) for peer in ("xwing", "tiefighter", "192.0.2.1", "host")
              for proto in ("TCP", "UDP") for port in (1, 64, 80, 81, 96, 127)]
    for _ in range(60):
        lines = []
        for section in rng.sample(["ingress", "ingressDeny"] * 2, 3):
            rule = yaml.safe_load(rng.choice(peers))
            port_yaml = rng.choice(ports)
            if port_yaml:
                rule["toPorts"] = [{"ports": [yaml.safe_load(port_yaml)]}]
            if rule:
                lines.append((section, rule))
        spec: dict[str, Any] = {"endpointSelector": {"matchLabels": {"class": "deathstar"}}}
        for section, rule in lines:
            spec.setdefault(section, []).append(rule)
        doc = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "r"}, "spec": spec}
        compiled = compile_policies(load_documents(doc), LAB.endpoints, IDENTITIES.all(), NAMESPACES)
        for peer, proto, probe_port in probes:
            meaning = oracle(compiled, "deathstar-1", "ingress", peer, proto, probe_port)
            case = (spec, peer, proto, probe_port)
            assert lookup(compiled, "deathstar-1", "ingress", peer, proto, probe_port) == meaning, case
            assert lookup_either(compiled, "deathstar-1", "ingress", peer, proto, probe_port) == meaning, case


# Stage 4: explain and diff


def test_explain_rows_and_frame() -> None:
    compiled = compile_text(RULE1 + "---\n" + cnp(XW + "ingress: [{}]\n", name="lock-xwing"))
    rows = explain(compiled, pod="deathstar-1")
    assert [(r["pod"], r["direction"], r["protocol"], r["port"], r["verdict"]) for r in rows] == [
        ("default/deathstar-1", "ingress", "TCP", "80", "allow")] * 2
    tie = next(r for r in rows if r["identity"] == LAB.identity_of["tiefighter"])
    assert "k8s:class=tiefighter" in tie["peer_labels"] and tie["rules"] == ["default/rule1"]
    [locked] = explain(compiled, pod="xwing")
    assert locked["verdict"] == "default-deny" and locked["direction"] == "ingress"
    frame = explain_frame(compiled)
    assert list(frame.columns)[:4] == ["ep_id", "pod", "direction", "identity"]
    assert len(frame) == 5


def test_diff_reports_added_removed_changed_and_enforcement() -> None:
    old = compile_text(RULE1)
    new = compile_text(RULE1.replace('"80"', '"80", endPort: 81') + "---\n" + cnp(
        DS + "ingressDeny:\n- fromEndpoints: [{matchLabels: {class: tiefighter}}]\n  toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n",
        name="deny-tie") + cnp(XW + "egress: [{}]\n", name="lock"))
    change = diff(old, new)
    tie = LAB.identity_of["tiefighter"]
    assert {(e.ep_id, e.identity, e.port, e.port_prefix) for e in change.removed} == {
        (ep, ident, 80, 16) for ep in (1, 2) for ident in (tie, LAB.identity_of["deathstar-1"])} - {
        (1, tie, 80, 16), (2, tie, 80, 16)}
    assert {(e.ep_id, e.identity, e.port, e.port_prefix) for e in change.added} == {
        (ep, ident, 80, 15) for ep in (1, 2) for ident in (tie, LAB.identity_of["deathstar-1"])}
    assert [(o.deny, n.deny, n.rules) for o, n in change.changed] == [(False, True, ("default/deny-tie",))] * 2
    assert change.enforced_added == {(4, "egress")} and change.enforced_removed == set()
    assert change.endpoints == [1, 2, 4]
    assert "3 endpoint(s)" in change.summary()
    assert {r["change"] for r in change.rows(old, new)} == {"+", "-", "~", "enforce"}
    assert diff(new, new).empty and diff(new, new).summary() == "no change"


def test_module_doctests() -> None:
    import doctest
    import importlib

    for name in ("cidr", "compiler", "documents", "ports", "selectors", "views"):
        module = importlib.import_module(f"workbench.policy.{name}")
        result = doctest.testmod(module)
        assert result.failed == 0, name


# ---- the map's slots and live edits (the compiler owns deny precedence) -----------------------------


def _by_slot(entries: list[PolicyEntry]) -> dict[tuple[int, int, int, int], tuple[bool, bool]]:
    return {(e.identity, e.protocol, e.port, e.port_prefix): (e.deny, e.shadowed)
            for e in map_entries(entries) if e.direction == "ingress"}


def test_allow_under_a_covering_deny_is_planned_as_a_shadowed_deny() -> None:
    got = _by_slot([
        PolicyEntry(1, "ingress", 300, 6, 80, 16),                # under the L3 deny
        PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True),
        PolicyEntry(1, "ingress", 301, 6, 8080, 16),              # under 301's range deny
        PolicyEntry(1, "ingress", 301, 6, 8080, 14, deny=True),
        PolicyEntry(1, "ingress", 301, 6, 9000, 16),              # outside it: stays allow
        PolicyEntry(1, "ingress", 302, 6, 0, 0),                  # wider than the deny: stays allow
        PolicyEntry(1, "ingress", 302, 6, 22, 16, deny=True),
        PolicyEntry(1, "egress", 300, 6, 80, 16),                 # other direction: stays allow
        PolicyEntry(1, "ingress", 0, 6, 80, 16),                  # other identity bucket: stays allow
    ])
    assert got[(300, 6, 80, 16)] == (True, True)
    assert got[(301, 6, 8080, 16)] == (True, True)
    assert got[(301, 6, 9000, 16)] == (False, False)
    assert got[(302, 6, 0, 0)] == (False, False)
    assert got[(302, 6, 22, 16)] == (True, False)
    assert got[(0, 6, 80, 16)] == (False, False)
    egress = [e for e in map_entries([PolicyEntry(1, "egress", 300, 6, 80, 16),
                                      PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True)]) if e.direction == "egress"]
    assert [(e.deny, e.shadowed) for e in egress] == [(False, False)]


def test_equal_keys_merge_with_deny_winning_and_rules_united() -> None:
    (slot,) = map_entries([
        PolicyEntry(1, "ingress", 300, 6, 80, 16, proxy_port=15000, rules=("default/a",)),
        PolicyEntry(1, "ingress", 300, 6, 80, 16, deny=True, rules=("default/b",)),
    ])
    assert slot.deny and not slot.shadowed and slot.proxy_port == 0
    assert slot.rules == ("default/a", "default/b")


def test_a_port_with_any_protocol_becomes_tcp_udp_sctp_and_ports_start_their_block() -> None:
    slots = map_entries([PolicyEntry(1, "ingress", 0, 0, 53, 16), PolicyEntry(1, "ingress", 0, 6, 8081, 14)])
    assert sorted((e.protocol, e.port, e.port_prefix) for e in slots) == \
        [(6, 53, 16), (6, 8080, 14), (17, 53, 16), (132, 53, 16)]
    assert {e.match_type for e in slots} == {"L4-Only"}


def test_planning_is_idempotent_and_compiled_entries_are_already_slots() -> None:
    entries = [PolicyEntry(1, "ingress", 300, 6, 80, 16), PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True),
               PolicyEntry(1, "ingress", 0, 0, 53, 16)]
    once = map_entries(entries)
    assert map_entries(once) == once
    compiled = compile_text(RULE1)
    assert map_entries(compiled.entries) == compiled.entries


def test_live_edits_add_deny_and_remove_with_shadowed_allows_coming_back() -> None:
    slots, _ = live_edit("allow", 3, "ingress", identity=300, protocol=6, port=80)([])
    slots, _ = live_edit("deny", 3, "ingress", identity=300)(slots)
    assert {(e.protocol, e.deny, e.shadowed) for e in slots} == {(0, True, False), (6, True, True)}
    slots, removed = live_edit("remove", 3, "ingress", identity=300)(slots)
    assert removed == 1
    assert [(e.protocol, e.port, e.deny, e.shadowed, e.rules) for e in slots] == [(6, 80, False, False, ("live-edit",))]
    slots, _ = live_edit("allow", 3, "ingress", protocol=6, port=8080, end_port=8083)(slots)
    slots, _ = live_edit("allow", 3, "ingress", identity=300, port=53)(slots)   # ANY: TCP, UDP and SCTP keys
    assert len(slots) == 5
    slots, removed = live_edit("remove", 3, "ingress", identity=300, port=53)(slots)
    assert removed == 3
    slots, removed = live_edit("remove", 3, "ingress", protocol=6, port=8080, end_port=8083)(slots)
    assert removed == 1 and [e.port for e in slots] == [80]
    assert live_edit("remove", 3, "ingress", identity=999)(slots) == (slots, 0)
    with pytest.raises(ValidationError, match="allow, deny or remove"):
        live_edit("flip", 3, "ingress")  # type: ignore[arg-type]
