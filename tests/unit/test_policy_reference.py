"""The compiler against an independent reference (tests/unit/policy_reference.py).

The reference reads the policy dicts and decides packet by packet what
docs/policy.md says; the compiler's output is looked up the way the datapath
looks it up (``lookup``/``lookup_either`` of test_policy_compile.py, which
mirror bpf/lib/policy.h: the peer's identity and "any peer", a deny from
either wins, no entry drops where default-deny). Hypothesis generates policy
sets (CiliumNetworkPolicy, clusterwide and NetworkPolicy; selectors, entities,
CIDRs with excepts, ipBlocks, ports, ranges, named ports, deny rules, both
directions, enableDefaultDeny, policyTypes) and packets over a fixed lab;
both must give the same verdict for every packet.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.unit.policy_reference import Packet, RefLab, admitted, direction_verdict, verdict
from tests.unit.test_policy_compile import IDENTITIES, LAB, NAMESPACES, SCENARIOS, lookup, lookup_either
from workbench.policy import compile_policies, load_documents

# The lab of test_policy_compile.py (same ids, pods and identities, so its lookups apply), with container
# port names: deathstar's replicas share an identity but declare different numbers for "http"; xwing's
# "dns" is TCP, so a UDP rule naming it resolves to nothing there.
NAMED_PORTS: dict[str, dict[str, tuple[int, str]]] = {
    "deathstar-1": {"http": (80, "TCP")},
    "deathstar-2": {"http": (8080, "TCP")},
    "tiefighter": {"dns": (53, "UDP"), "http": (8080, "TCP")},
    "xwing": {"http": (81, "TCP"), "dns": (53, "TCP")},
    "spy": {},
}
ENDPOINTS = [replace(ep, named_ports=NAMED_PORTS[ep.pod]) for ep in LAB.endpoints]
REF = RefLab(ENDPOINTS, NAMESPACES)
PODS = [ep.pod for ep in ENDPOINTS]
# Addresses outside the lab: inside and outside the generated prefixes and their excepts, one in the pod
# network that is no pod, and one in no prefix at all.
ADDRESSES = ["192.0.2.7", "192.0.2.100", "192.0.2.130", "192.0.2.200", "198.51.100.7", "10.200.0.99",
             "10.1.2.3", "203.0.113.9"]
PEERS = PODS + ["host", "health"] + ADDRESSES
TRIPLES = [(pod, direction, peer) for pod in PODS for direction in ("ingress", "egress") for peer in PEERS
           if peer != pod]
PROBES = 2     # packets judged per pod, direction and peer of each policy set
PORTS = [1, 53, 63, 64, 80, 81, 127, 128, 443, 8079, 8080, 8087, 8088, 8090, 8091, 65535]

# ---- strategies: policy documents as plain dicts ------------------------------------------------------

SUBJECTS = [{}, {"matchLabels": {"class": "deathstar"}}, {"matchLabels": {"org": "empire"}},
            {"matchLabels": {"class": "tiefighter"}},
            {"matchExpressions": [{"key": "class", "operator": "NotIn", "values": ["xwing"]}]}]
CILIUM_PEERS = [
    {}, {"matchLabels": {"org": "empire"}}, {"matchLabels": {"class": "xwing"}},
    {"matchLabels": {"k8s:class": "tiefighter"}},
    {"matchLabels": {"k8s:io.kubernetes.pod.namespace": "other"}},
    {"matchLabels": {"org": "empire", "io.kubernetes.pod.namespace": "default"}},
    {"matchLabels": {"k8s:io.cilium.k8s.namespace.labels.team": "spies"}},
    {"matchLabels": {"reserved:host": ""}}, {"matchLabels": {"reserved:world": ""}},
    {"matchExpressions": [{"key": "reserved:host", "operator": "DoesNotExist"}]},
    {"matchExpressions": [{"key": "org", "operator": "NotIn", "values": ["empire"]}]},
    {"matchExpressions": [{"key": "class", "operator": "Exists"}]},
    {"matchExpressions": [{"key": "any:class", "operator": "In", "values": ["deathstar", "xwing"]}]},
    {"matchExpressions": [{"key": "class", "operator": "DoesNotExist"}]},
]
ENTITIES = ["all", "world", "world-ipv4", "cluster", "host", "health", "remote-node"]
# (cidr, possible excepts): excepts lie inside their CIDR; some name a pod's /32 or the pod network
CIDRS: list[tuple[str, list[str]]] = [
    ("192.0.2.0/24", ["192.0.2.128/25", "192.0.2.7/32"]),
    ("192.0.2.128/25", ["192.0.2.192/26"]),
    ("198.51.100.0/24", []),
    ("0.0.0.0/0", ["10.0.0.0/8", "192.0.2.0/24"]),
    ("10.0.0.0/8", ["10.200.0.0/16"]),
    ("10.200.0.0/24", ["10.200.0.1/32", "10.200.0.4/32"]),
    ("10.200.0.0/30", ["10.200.0.1/32"]),          # deathstar-2 in range, its identity's other pod not
    ("10.200.0.2/32", []),
    ("10.200.0.3/32", []),
]
CNP_PORTS = [
    {"port": "80", "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}, {"port": "0", "protocol": "ANY"},
    {"port": "8080", "endPort": 8090, "protocol": "TCP"}, {"port": "64", "endPort": 127},
    {"port": "81"}, {"protocol": "UDP"}, {"port": "http", "protocol": "TCP"}, {"port": "dns", "protocol": "UDP"},
    {"port": "http"}, {"port": "443", "endPort": 443, "protocol": "TCP"},
]
KNP_PODS = [{}, {"matchLabels": {"org": "empire"}}, {"matchLabels": {"class": "deathstar"}},
            {"matchExpressions": [{"key": "class", "operator": "In", "values": ["xwing", "tiefighter"]}]}]
KNP_NAMESPACES = [{}, {"matchLabels": {"team": "spies"}}, {"matchLabels": {"kubernetes.io/metadata.name": "default"}}]
KNP_PORTS = [{"port": 80}, {"port": 80, "protocol": "UDP"}, {"protocol": "UDP"}, {"port": 8080, "endPort": 8090},
             {"port": "http"}, {"port": "dns", "protocol": "UDP"}, {"port": 53, "protocol": "UDP"},
             {"port": 64, "endPort": 127, "protocol": "TCP"}]


def _subset(items: list[Any], max_size: int = 2) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(items), min_size=1, max_size=max_size, unique_by=repr)


# ipBlocks over the pod network select pods (deathstar-1 and -2 share an identity, so a block holding
# only one of them selects neither): NetworkPolicy peers draw from these half of the time.
POD_NETWORK = [(cidr, excepts) for cidr, excepts in CIDRS if cidr.startswith("10.200.")]


@st.composite
def cidr_set(draw: st.DrawFn, pool: list[tuple[str, list[str]]] = CIDRS) -> dict[str, Any]:
    cidr, excepts = draw(st.sampled_from(pool))
    chosen = draw(st.lists(st.sampled_from(excepts), unique=True)) if excepts else []
    return {"cidr": cidr, "except": chosen} if chosen else {"cidr": cidr}


@st.composite
def cilium_rule(draw: st.DrawFn, word: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if draw(st.booleans()):
        rule[f"{word}Endpoints"] = draw(_subset(CILIUM_PEERS))
    if draw(st.integers(0, 3)) == 0:
        rule[f"{word}Entities"] = draw(_subset(ENTITIES))
    if draw(st.integers(0, 3)) == 0:
        rule[f"{word}CIDR"] = draw(st.lists(st.sampled_from([c for c, _ in CIDRS]), min_size=1, max_size=2,
                                            unique=True))
    if draw(st.integers(0, 3)) == 0:
        rule[f"{word}CIDRSet"] = draw(st.lists(cidr_set(), min_size=1, max_size=2))
    if draw(st.booleans()):
        rule["toPorts"] = draw(st.lists(st.builds(lambda ports: {"ports": ports}, _subset(CNP_PORTS, 3)),
                                        min_size=1, max_size=2))
    return rule                                   # may be {}: default-deny, allows nothing


@st.composite
def cilium_spec(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"endpointSelector": draw(st.sampled_from(SUBJECTS))}
    for section, word in (("ingress", "from"), ("ingressDeny", "from"), ("egress", "to"), ("egressDeny", "to")):
        if draw(st.integers(0, 2)) == 0:
            spec[section] = draw(st.lists(cilium_rule(word), min_size=1, max_size=3))
    if draw(st.integers(0, 4)) == 0:
        spec["enableDefaultDeny"] = draw(st.fixed_dictionaries(
            {}, optional={"ingress": st.booleans(), "egress": st.booleans()}))
    return spec


@st.composite
def cilium_policy(draw: st.DrawFn, name: str) -> dict[str, Any]:
    clusterwide = draw(st.integers(0, 3)) == 0
    metadata: dict[str, Any] = {"name": name}
    if not clusterwide:
        metadata["namespace"] = draw(st.sampled_from(["default", "default", "other"]))
    doc: dict[str, Any] = {"apiVersion": "cilium.io/v2", "metadata": metadata,
                           "kind": "CiliumClusterwideNetworkPolicy" if clusterwide else "CiliumNetworkPolicy"}
    if draw(st.integers(0, 4)) == 0:
        doc["specs"] = draw(st.lists(cilium_spec(), min_size=1, max_size=2))
    else:
        doc["spec"] = draw(cilium_spec())
    return doc


@st.composite
def knp_peer(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(st.sampled_from(["pod", "namespace", "both", "ipBlock"]))
    if shape == "ipBlock":
        return {"ipBlock": draw(st.one_of(cidr_set(), cidr_set(POD_NETWORK)))}
    peer: dict[str, Any] = {}
    if shape in ("pod", "both"):
        peer["podSelector"] = draw(st.sampled_from(KNP_PODS))
    if shape in ("namespace", "both"):
        peer["namespaceSelector"] = draw(st.sampled_from(KNP_NAMESPACES))
    return peer


@st.composite
def knp_rule(draw: st.DrawFn, word: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if draw(st.booleans()):
        rule[word] = draw(st.lists(knp_peer(), min_size=1, max_size=2))
    if draw(st.booleans()):
        rule["ports"] = draw(_subset(KNP_PORTS, 3))
    return rule


@st.composite
def network_policy(draw: st.DrawFn, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(st.sampled_from(KNP_PODS))}
    types = draw(st.sampled_from([None, ["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    directions = ["ingress", "egress"] if types is None else [t.lower() for t in types]
    if types is not None:
        spec["policyTypes"] = types
    for direction in directions:
        if draw(st.booleans()):
            spec[direction] = draw(st.lists(knp_rule("from" if direction == "ingress" else "to"), min_size=1,
                                            max_size=2))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": draw(st.sampled_from(["default", "default", "other"]))},
            "spec": spec}


@st.composite
def policy_set(draw: st.DrawFn) -> list[dict[str, Any]]:
    kinds = draw(st.lists(st.sampled_from(["cilium", "cilium", "knp"]), min_size=1, max_size=3))
    return [draw(cilium_policy(f"p{i}") if kind == "cilium" else network_policy(f"p{i}"))
            for i, kind in enumerate(kinds)]


def _compile(docs: list[dict[str, Any]]) -> Any:
    return compile_policies(load_documents(docs), ENDPOINTS, IDENTITIES.all(), NAMESPACES)


# Shrinking these nested documents can take Hypothesis' whole five-minute shrink budget; a failure is
# reported unshrunk (the case names the packet, the falsifying example the documents) unless asked for.
_PHASES = tuple(Phase) if os.environ.get("WORKBENCH_SHRINK") else (Phase.explicit, Phase.reuse, Phase.generate)


@settings(max_examples=300, deadline=None, phases=_PHASES, suppress_health_check=[HealthCheck.too_slow])
@given(docs=policy_set(), rng=st.randoms(use_true_random=False))
def test_compiled_map_agrees_with_the_reference(docs: list[dict[str, Any]], rng: random.Random) -> None:
    compiled = _compile(docs)
    # Every pod, direction and peer, each with protocols and ports from a seeded generator (drawing each
    # packet through Hypothesis would cost more than judging it).
    for pod, direction, peer in TRIPLES:
        for _ in range(PROBES):
            proto, port = rng.choice(["TCP", "UDP"]), rng.choice(PORTS)
            meaning = direction_verdict(REF, docs, pod, direction, peer, proto, port)
            case = f"{pod} {direction} peer {peer} {port}/{proto}"
            assert lookup_either(compiled, pod, direction, peer, proto, port) == meaning, case
            assert lookup(compiled, pod, direction, peer, proto, port) == meaning, case


# ---- the reference itself, against verdicts written by hand -------------------------------------------


@pytest.mark.parametrize(("text", "checks"), [(t, c) for _, t, c in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_reference_gives_the_hand_written_verdicts(text: str, checks: list[tuple[str, str, str, str, int, str]]) -> None:
    import yaml

    docs = [d for d in yaml.safe_load_all(text) if d]
    lab = RefLab(LAB.endpoints, NAMESPACES)
    for pod, direction, peer, proto, port, expected in checks:
        peer = "203.0.113.250" if peer == "world" else peer      # an address no scenario names
        assert direction_verdict(lab, docs, pod, direction, peer, proto, port) == expected, (pod, direction, peer)


def test_reference_named_ports_and_shared_identities() -> None:
    """Named ports resolve per pod (ingress) and per peer identity (egress); ipBlock needs a whole identity."""
    knp = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "n"},
           "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"ports": [{"port": "http"}]}],
                    "egress": [{"to": [{"ipBlock": {"cidr": "10.200.0.0/24", "except": ["10.200.0.1/32"]}}]}]}}
    docs = [knp]
    assert verdict(REF, docs, Packet("xwing", "deathstar-1", "TCP", 80, "ingress")) == "allow"
    assert verdict(REF, docs, Packet("xwing", "deathstar-2", "TCP", 80, "ingress")) == "drop"
    assert verdict(REF, docs, Packet("xwing", "deathstar-2", "TCP", 8080, "ingress")) == "allow"
    assert verdict(REF, docs, Packet("xwing", "tiefighter", "TCP", 80, "egress")) == "allow"
    # deathstar-2 is in range, but its identity is shared with deathstar-1, which the except removes
    assert verdict(REF, docs, Packet("xwing", "deathstar-2", "TCP", 80, "egress")) == "drop"
    assert verdict(REF, docs, Packet("xwing", "10.200.0.99", "TCP", 80, "egress")) == "allow"
    compiled = _compile(docs)
    for pod, direction, peer, port in [("deathstar-2", "ingress", "xwing", 80), ("deathstar-2", "ingress", "xwing", 8080),
                                       ("xwing", "egress", "deathstar-2", 80), ("xwing", "egress", "10.200.0.99", 80)]:
        assert lookup_either(compiled, pod, direction, peer, "TCP", port) == direction_verdict(
            REF, docs, pod, direction, peer, "TCP", port)


def test_reference_examples_and_both_ends() -> None:
    import doctest

    from tests.unit import policy_reference

    assert doctest.testmod(policy_reference).failed == 0
    rule1 = {"kind": "CiliumNetworkPolicy", "metadata": {"name": "rule1"},
             "spec": {"endpointSelector": {"matchLabels": {"class": "deathstar"}},
                      "ingress": [{"fromEndpoints": [{"matchLabels": {"org": "empire"}}]}]}}
    lock = {"kind": "CiliumNetworkPolicy", "metadata": {"name": "lock"},
            "spec": {"endpointSelector": {"matchLabels": {"class": "tiefighter"}}, "egress": [{}]}}
    assert admitted(REF, [rule1], "tiefighter", "deathstar-1", "TCP", 80)
    assert not admitted(REF, [rule1], "xwing", "deathstar-1", "TCP", 80)
    assert not admitted(REF, [rule1, lock], "tiefighter", "deathstar-1", "TCP", 80)   # the client's egress judges
    assert admitted(REF, [rule1, lock], "xwing", "192.0.2.1", "UDP", 53)              # no pod at the far end


def test_reserved_world_selector_selects_addresses_inside_named_prefixes() -> None:
    """A CIDR identity carries reserved:world, so a selector on it covers addresses another policy names."""
    docs = [{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "out"},
             "spec": {"endpointSelector": {"matchLabels": {"class": "xwing"}},
                      "egress": [{"toEndpoints": [{"matchLabels": {"reserved:world": ""}}]}]}},
            {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "names-a-prefix"},
             "spec": {"endpointSelector": {"matchLabels": {"class": "tiefighter"}},
                      "egress": [{"toCIDR": ["192.0.2.0/24"]}]}}]
    compiled = _compile(docs)
    for peer, expected in [("192.0.2.7", "allow"), ("203.0.113.9", "allow"), ("deathstar-1", "drop"), ("host", "drop")]:
        assert direction_verdict(REF, docs, "xwing", "egress", peer, "TCP", 80) == expected, peer
        assert lookup_either(compiled, "xwing", "egress", peer, "TCP", 80) == expected, peer
