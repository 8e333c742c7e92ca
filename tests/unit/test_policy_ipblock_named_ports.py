"""NetworkPolicy ipBlock (pods in range selected), Cilium CIDR (pods never selected) and named ports.

The compiler's entries are compared with a small reference that reads the
NetworkPolicy documents the way the Kubernetes API describes them, pod by pod
and address by address (no identities, no policy map): random policies from
hypothesis must give the same verdict for every pod pair, port and protocol.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.errors import ValidationError
from workbench.lab.identity import IdentityAllocator, identity_labels
from workbench.lab.manifests import parse_manifests
from workbench.lab.model import Endpoint
from workbench.policy import compile_policies, explain, load_documents
from workbench.policy.cidr import CILIUM_CIDR, K8S_IPBLOCK
from workbench.policy.compiler import CompiledPolicy
from workbench.policy.evaluate import connection_allowed

NAMESPACES = {ns: {"kubernetes.io/metadata.name": ns, "team": team}
              for ns, team in (("x", "blue"), ("y", "blue"), ("z", "red"))}
NAMED = {"serve-80-tcp": (80, "TCP"), "serve-81-tcp": (81, "TCP")}
# (namespace, pod label, address, containerPort names): y/b serves its "serve-80-tcp" on 8080, z/a names
# no ports, x/c has a UDP port named "dns".
PODS = [
    ("x", "a", "10.200.0.10", NAMED),
    ("x", "b", "10.200.0.11", NAMED),
    ("x", "c", "10.200.0.12", {**NAMED, "dns": (53, "UDP")}),
    ("y", "a", "10.200.0.20", NAMED),
    ("y", "b", "10.200.0.21", {"serve-80-tcp": (8080, "TCP"), "serve-81-tcp": (81, "TCP")}),
    ("z", "a", "10.200.0.30", {}),
]
PROBES = [("TCP", 80), ("TCP", 81), ("TCP", 8080), ("UDP", 53), ("UDP", 80)]


def make_endpoints(pods: list[tuple[str, str, str, dict[str, tuple[int, str]]]],
                   labels_of: Any = None) -> tuple[list[Endpoint], IdentityAllocator]:
    alloc = IdentityAllocator()
    endpoints = []
    for ep_id, (ns, name, ip, named) in enumerate(pods, start=1):
        labels = labels_of(ns, name) if labels_of else {"pod": name}
        ident = alloc.allocate(identity_labels(labels, ns, NAMESPACES[ns]))
        endpoints.append(Endpoint(ep_id, f"{ns}-{name}", ns, ip, ident.id, ident.labels, labels,
                                  f"wb-t-{ns}-{name}", f"lxc{ep_id}", named_ports=dict(named)))
    return endpoints, alloc


ENDPOINTS, IDENTITIES = make_endpoints(PODS)


def compile_docs(docs: Any, endpoints: list[Endpoint] = ENDPOINTS,
                 identities: IdentityAllocator = IDENTITIES) -> CompiledPolicy:
    return compile_policies(load_documents(docs), endpoints, list(identities.all()), NAMESPACES)


def allowed(compiled: CompiledPolicy, src: Endpoint, dst: Endpoint, protocol: str, port: int) -> bool:
    return connection_allowed(compiled, (src.id, src.identity), (dst.id, dst.identity), protocol, port)


# ---- the reference: NetworkPolicy read pod by pod ------------------------------------------------------


def _labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: dict[str, Any], policy_ns: str, pod: Endpoint) -> bool:
    if "ipBlock" in peer:
        ip = ipaddress.IPv4Address(pod.ipv4)
        block = peer["ipBlock"]
        return ip in ipaddress.IPv4Network(block["cidr"]) and not any(
            ip in ipaddress.IPv4Network(e) for e in block.get("except", []))
    if "namespaceSelector" in peer:
        if not _labels_match(peer["namespaceSelector"], NAMESPACES[pod.namespace]):
            return False
    elif pod.namespace != policy_ns:
        return False
    return _labels_match(peer.get("podSelector", {}), pod.pod_labels)


def _port_matches(item: dict[str, Any], server: Endpoint, protocol: str, port: int) -> bool:
    if item.get("protocol", "TCP") != protocol:
        return False
    if "port" not in item:
        return True
    wanted = item["port"]
    if isinstance(wanted, str):   # a name: the server pod's container port of that name and protocol
        return server.named_ports.get(wanted) == (port, protocol)
    return bool(wanted <= port <= item.get("endPort", wanted))


def _types(spec: dict[str, Any]) -> list[str]:
    if "policyTypes" in spec:
        return list(spec["policyTypes"])
    return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def reference_allowed(docs: list[dict[str, Any]], src: Endpoint, dst: Endpoint, protocol: str, port: int) -> bool:
    """Kubernetes' meaning: both the client's egress and the server's ingress must allow the connection."""
    for subject, peer, kind, section, word in ((dst, src, "Ingress", "ingress", "from"),
                                                (src, dst, "Egress", "egress", "to")):
        isolating = [d for d in docs if d["metadata"]["namespace"] == subject.namespace
                     and kind in _types(d["spec"]) and _labels_match(d["spec"]["podSelector"], subject.pod_labels)]
        if not isolating:
            continue
        if not any((not rule.get(word) or any(_peer_matches(p, d["metadata"]["namespace"], peer) for p in rule[word]))
                   and (not rule.get("ports") or any(_port_matches(i, dst, protocol, port) for i in rule["ports"]))
                   for d in isolating for rule in d["spec"].get(section) or []):
            return False
    return True


# ---- random NetworkPolicies -----------------------------------------------------------------------

CIDRS = ["10.200.0.0/24", "10.200.0.8/29", "10.200.0.16/28", "10.200.0.20/32", "0.0.0.0/4", "0.0.0.0/0",
         "192.0.2.0/24"]
EXCEPTS = ["10.200.0.11/32", "10.200.0.8/30", "10.200.0.16/28", "10.200.0.21/32", "10.200.0.0/16",
           "10.200.0.12/31"]

pod_selectors = st.sampled_from([{}, {"matchLabels": {"pod": "a"}}, {"matchLabels": {"pod": "b"}}])
namespace_selectors = st.sampled_from([{}, {"matchLabels": {"team": "blue"}},
                                       {"matchLabels": {"kubernetes.io/metadata.name": "z"}}])


@st.composite
def ip_blocks(draw: Any) -> dict[str, Any]:
    cidr = draw(st.sampled_from(CIDRS))
    net = ipaddress.IPv4Network(cidr)
    inside = [e for e in EXCEPTS if ipaddress.IPv4Network(e).subnet_of(net) and ipaddress.IPv4Network(e) != net]
    excepts = draw(st.lists(st.sampled_from(inside), max_size=2, unique=True)) if inside else []
    return {"ipBlock": {"cidr": cidr, **({"except": excepts} if excepts else {})}}


peers = st.one_of(
    st.builds(lambda s: {"podSelector": s}, pod_selectors),
    st.builds(lambda n: {"namespaceSelector": n}, namespace_selectors),
    st.builds(lambda s, n: {"podSelector": s, "namespaceSelector": n}, pod_selectors, namespace_selectors),
    ip_blocks(),
)
ports = st.one_of(
    st.builds(lambda p: {"port": p}, st.sampled_from([80, 81, 8080, "serve-80-tcp", "serve-81-tcp", "http"])),
    st.builds(lambda p, proto: {"port": p, "protocol": proto},
              st.sampled_from([53, 80, "dns", "serve-80-tcp"]), st.sampled_from(["TCP", "UDP"])),
    st.just({"protocol": "UDP"}),
    st.just({"port": 80, "endPort": 8080}),
)


@st.composite
def rules(draw: Any, word: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if draw(st.booleans()):
        rule[word] = draw(st.lists(peers, min_size=1, max_size=2))
    if draw(st.booleans()):
        rule["ports"] = draw(st.lists(ports, min_size=1, max_size=2))
    return rule


@st.composite
def network_policies(draw: Any, index: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": draw(pod_selectors)}
    types = draw(st.sampled_from([["Ingress"], ["Egress"], ["Ingress", "Egress"]]))
    spec["policyTypes"] = types
    if "Ingress" in types:
        spec["ingress"] = draw(st.lists(rules("from"), max_size=2))
    if "Egress" in types:
        spec["egress"] = draw(st.lists(rules("to"), max_size=2))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"np{index}", "namespace": draw(st.sampled_from(["x", "y", "z"]))}, "spec": spec}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(), min_size=1, max_size=3).flatmap(
    lambda xs: st.tuples(*(network_policies(i) for i in range(len(xs))))))
def test_network_policies_match_the_reference_for_every_pod_pair(docs: tuple[dict[str, Any], ...]) -> None:
    compiled = compile_docs(list(docs))
    for src in ENDPOINTS:
        for dst in ENDPOINTS:
            if src is dst:
                continue
            for protocol, port in PROBES:
                expected = reference_allowed(list(docs), src, dst, protocol, port)
                assert allowed(compiled, src, dst, protocol, port) == expected, (src.pod, dst.pod, protocol, port)


# ---- ipBlock and CIDR rules, case by case ----------------------------------------------------------


def knp(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def cnp(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def ep(ns: str, name: str, endpoints: list[Endpoint] = ENDPOINTS) -> Endpoint:
    return next(e for e in endpoints if e.pod == f"{ns}-{name}")


XA_EGRESS = {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}


def test_wide_ipblock_with_a_pod_excepted_selects_every_other_pod() -> None:
    compiled = compile_docs(knp("wide", "x", {**XA_EGRESS, "egress": [{"to": [
        {"ipBlock": {"cidr": "0.0.0.0/4", "except": ["10.200.0.11/32"]}}]}]}))
    reached = {d.pod for d in ENDPOINTS if d.pod != "x-a" and allowed(compiled, ep("x", "a"), d, "TCP", 80)}
    assert reached == {"x-c", "y-a", "y-b", "z-a"}


def test_exact_pod_address_selects_that_pod_only_and_keeps_its_identity() -> None:
    compiled = compile_docs(knp("one", "x", {**XA_EGRESS, "egress": [{"to": [{"ipBlock": {"cidr": "10.200.0.11/32"}}]}]}))
    reached = {d.pod for d in ENDPOINTS if d.pod != "x-a" and allowed(compiled, ep("x", "a"), d, "TCP", 80)}
    assert reached == {"x-b"}
    # the pod's /32 stays the pod's in the ipcache: no CIDR identity replaces it
    assert "10.200.0.11/32" not in compiled.cidr_identities


def test_cilium_cidr_rules_never_select_pods_whatever_the_prefix() -> None:
    for cidr in ("0.0.0.0/4", "10.200.0.0/24", "10.200.0.11/32"):
        compiled = compile_docs(cnp("c", "x", {"endpointSelector": {"matchLabels": {"pod": "a"}},
                                               "egress": [{"toCIDR": [cidr]}]}))
        reached = {d.pod for d in ENDPOINTS if d.pod != "x-a" and allowed(compiled, ep("x", "a"), d, "TCP", 80)}
        assert reached == set(), cidr
        assert f"{ENDPOINTS[1].ipv4}/32" not in compiled.cidr_identities


def test_ipblock_still_selects_addresses_outside_the_lab() -> None:
    compiled = compile_docs(knp("out", "x", {**XA_EGRESS, "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}]}))
    outside = compiled.cidr_identities["192.0.2.0/24"]
    assert connection_allowed(compiled, (ep("x", "a").id, ep("x", "a").identity), None, "TCP", 80,
                              dst_identity=outside)
    assert not connection_allowed(compiled, (ep("x", "a").id, ep("x", "a").identity), None, "TCP", 80,
                                  dst_identity=2)


def test_pods_sharing_an_identity_are_selected_only_when_all_are_in_range() -> None:
    # x/a and x/b carry the same labels, so one identity; the ipBlock covers x/a only
    endpoints, identities = make_endpoints(PODS[:3], labels_of=lambda ns, name: {"app": "same"}
                                           if name in "ab" else {"app": name})
    assert ep("x", "a", endpoints).identity == ep("x", "b", endpoints).identity
    src = ep("x", "c", endpoints)
    policy = {"podSelector": {"matchLabels": {"app": "c"}}, "policyTypes": ["Egress"]}
    only_a = compile_docs(knp("a", "x", {**policy, "egress": [{"to": [{"ipBlock": {"cidr": "10.200.0.10/32"}}]}]}),
                          endpoints, identities)
    assert not allowed(only_a, src, ep("x", "a", endpoints), "TCP", 80)   # the safe side: fewer, never more
    both = compile_docs(knp("ab", "x", {**policy, "egress": [{"to": [{"ipBlock": {"cidr": "10.200.0.10/31"}}]}]}),
                        endpoints, identities)
    assert allowed(both, src, ep("x", "a", endpoints), "TCP", 80)
    assert allowed(both, src, ep("x", "b", endpoints), "TCP", 80)


def test_explain_names_the_cidr_meaning() -> None:
    compiled = compile_docs([
        knp("k8s", "x", {**XA_EGRESS, "egress": [{"to": [{"ipBlock": {"cidr": "10.200.0.0/24"}}]}]}),
        cnp("cil", "x", {"endpointSelector": {"matchLabels": {"pod": "b"}},
                         "egress": [{"toCIDR": ["192.0.2.0/24"]}, {"toEndpoints": [{}]}]}),
    ])
    rows = explain(compiled)
    by_pod = {(r["pod"], r["identity"]): r["cidr"] for r in rows}
    assert by_pod[("x/x-a", ep("y", "a").identity)] == K8S_IPBLOCK
    assert by_pod[("x/x-b", compiled.cidr_identities["192.0.2.0/24"])] == CILIUM_CIDR
    assert by_pod[("x/x-b", ep("x", "c").identity)] == ""   # selected by toEndpoints, not by a CIDR


# ---- named ports ------------------------------------------------------------------------------------


def test_ingress_named_port_is_each_subject_pods_own_port() -> None:
    compiled = compile_docs([knp("n", ns, {"podSelector": {}, "ingress": [{"ports": [{"port": "serve-80-tcp"}]}]})
                             for ns in ("y", "z")])
    client = ep("x", "a")
    assert allowed(compiled, client, ep("y", "a"), "TCP", 80)
    assert not allowed(compiled, client, ep("y", "a"), "TCP", 8080)
    assert allowed(compiled, client, ep("y", "b"), "TCP", 8080)   # y/b's serve-80-tcp is 8080
    assert not allowed(compiled, client, ep("y", "b"), "TCP", 80)
    assert not any(e.ep_id == ep("z", "a").id for e in compiled.entries)   # no such name: no entry
    assert not allowed(compiled, client, ep("z", "a"), "TCP", 80)


def test_egress_named_port_is_each_peer_pods_port() -> None:
    compiled = compile_docs(knp("e", "x", {**XA_EGRESS, "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}))
    client = ep("x", "a")
    assert allowed(compiled, client, ep("y", "a"), "TCP", 80)
    assert allowed(compiled, client, ep("y", "b"), "TCP", 8080)
    assert not allowed(compiled, client, ep("y", "b"), "TCP", 80)
    assert not allowed(compiled, client, ep("z", "a"), "TCP", 80)
    assert {e.identity for e in compiled.entries} == {d.identity for d in ENDPOINTS if d.named_ports}


def test_named_port_protocol_must_match_the_container_port() -> None:
    udp = compile_docs(knp("u", "x", {"podSelector": {}, "ingress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}))
    tcp = compile_docs(knp("t", "x", {"podSelector": {}, "ingress": [{"ports": [{"port": "dns"}]}]}))
    assert allowed(udp, ep("y", "a"), ep("x", "c"), "UDP", 53)
    assert not allowed(tcp, ep("y", "a"), ep("x", "c"), "UDP", 53)
    assert not allowed(tcp, ep("y", "a"), ep("x", "c"), "TCP", 53)


def test_cilium_named_port_with_any_protocol() -> None:
    compiled = compile_docs(cnp("c", "x", {"endpointSelector": {},
                                           "ingress": [{"toPorts": [{"ports": [{"port": "dns"}]}]}]}))
    assert allowed(compiled, ep("y", "a"), ep("x", "c"), "UDP", 53)
    assert not allowed(compiled, ep("y", "a"), ep("x", "a"), "UDP", 53)


@pytest.mark.parametrize(("port", "message"), [
    ("Serve_80", "is neither a port number nor a valid port name"),
    ("a-very-long-name", "is neither a port number nor a valid port name"),
])
def test_bad_port_names_are_refused(port: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load_documents(knp("bad", "x", {"podSelector": {}, "ingress": [{"ports": [{"port": port}]}]}))


def test_manifests_keep_container_port_names() -> None:
    spec = parse_manifests(["""
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec:
  containers:
  - name: c
    image: registry.k8s.io/e2e-test-images/agnhost:2.47
    ports:
    - {containerPort: 80, name: serve-80-tcp}
    - {containerPort: 81, name: serve-81-tcp, protocol: TCP}
"""])
    assert [(p.port, p.protocol, p.name) for p in spec.pods[0].ports] == [(80, "TCP", "serve-80-tcp"),
                                                                         (81, "TCP", "serve-81-tcp")]
    assert spec.pods[0].app == "echo"


@pytest.mark.parametrize(("ports", "message"), [
    ("[{containerPort: 80, name: web}, {containerPort: 81, name: web}]", "port name 'web' is used twice"),
    ("[{containerPort: 80, name: Web}]", "is not a valid port name"),
    ("[{containerPort: 80, name: serve--80}]", "is not a valid port name"),
])
def test_manifests_refuse_bad_or_duplicate_port_names(ports: str, message: str) -> None:
    text = (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: a}}\nspec:\n  containers:\n  - name: c\n"
            f"    image: nginx\n    ports: {ports}\n")
    with pytest.raises(ValidationError, match=message):
        parse_manifests([text])


def test_endpoint_named_ports_survive_json() -> None:
    import json

    before = ep("y", "b")
    data = json.loads(json.dumps(before.to_dict()))
    after = Endpoint(**data)
    assert after.named_ports == before.named_ports == {"serve-80-tcp": (8080, "TCP"), "serve-81-tcp": (81, "TCP")}


def test_policy_explain_terminal_view_shows_the_cidr_meaning() -> None:
    from workbench.cli.policy import entries_view
    from workbench.policy.views import explain_frame

    compiled = compile_docs(knp("k8s", "x", {**XA_EGRESS, "egress": [{"to": [{"ipBlock": {"cidr": "10.200.0.20/32"}}]}]}))
    shown = entries_view(explain_frame(compiled))
    assert list(shown["cidr"]) == [K8S_IPBLOCK]
