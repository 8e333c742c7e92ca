"""A reference for what a set of policies means, written from docs/policy.md alone.

The compiler turns policies into identity-keyed map entries; this module
answers the same question the slow and obvious way, packet by packet, from the
documents (plain dicts, as YAML parses them) and the lab's endpoints. It
imports nothing from ``workbench.policy``: it shares no parser, selector,
CIDR or port code with the compiler, so a misreading there cannot hide here.

The meaning it implements (docs/policy.md, "Meaning" and the sections per kind):

- the specs that select an endpoint decide its directions; a direction is
  default-deny when any of them enforces it (CNP: it has allow or deny rules
  there, unless ``enableDefaultDeny`` says otherwise; NetworkPolicy: its
  ``policyTypes``);
- a matching deny rule of any selecting spec denies, also in a direction that
  is not default-deny; else a matching allow rule allows; else the packet is
  dropped if the direction is default-deny and passes otherwise;
- peers: endpoint selectors (namespace-scoped as documented), entities,
  Cilium CIDRs (external addresses only, never a pod), Kubernetes ipBlocks
  (external addresses and pods in range, a pod only when every pod of its
  identity is in range), ports with protocol, ranges and names.

Verdicts use the words of the datapath lookup in the unit tests: ``"deny"``,
``"allow"``, ``"drop"`` (default deny) and ``"pass"`` (not enforced).

Example::

    >>> from workbench.lab.model import Endpoint
    >>> ep = Endpoint(1, "a", "default", "10.0.0.1", 256, (), {"app": "a"}, "wb-x-a", "lxc1")
    >>> lab = RefLab([ep], {"default": {}})
    >>> doc = {"kind": "CiliumNetworkPolicy", "metadata": {"name": "p"},
    ...        "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": ["world"]}]}}
    >>> verdict(lab, [doc], Packet("192.0.2.1", "a", "TCP", 80, "ingress"))
    'allow'
    >>> verdict(lab, [doc], Packet("host", "a", "TCP", 80, "ingress"))
    'drop'
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from workbench.lab.model import Endpoint

Verdict = Literal["allow", "deny", "drop", "pass"]

POD_NAMESPACE = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS = "io.cilium.k8s.namespace.labels."
RESERVED_PEERS = ("host", "health", "remote-node")   # the node's own identities, by name
ENTITY_PEERS = {
    "all": lambda peer: True,
    "world": lambda peer: peer.address is not None,
    "world-ipv4": lambda peer: peer.address is not None,
    "cluster": lambda peer: peer.pod is not None or peer.reserved is not None,
    "host": lambda peer: peer.reserved == "host",
    "health": lambda peer: peer.reserved == "health",
    "remote-node": lambda peer: peer.reserved == "remote-node",
}


@dataclass(frozen=True)
class Packet:
    """The first packet of a connection, judged at ``direction`` of the end that is a lab pod.

    ``src``/``dst``: a pod name ("xwing" or "default/xwing"), a reserved peer
    ("host", "health", "remote-node") or an IPv4 address outside the lab.
    ``direction`` "ingress" judges it at ``dst`` (a pod), "egress" at ``src``.
    """

    src: str
    dst: str
    protocol: str   # "TCP" or "UDP"
    port: int       # destination port
    direction: Literal["ingress", "egress"]


@dataclass
class RefLab:
    """The endpoints (pods) and namespace labels the policies are judged against."""

    endpoints: list[Endpoint]
    namespaces: Mapping[str, Mapping[str, str]]

    def pod(self, name: str) -> Endpoint | None:
        for ep in self.endpoints:
            if name in (ep.pod, f"{ep.namespace}/{ep.pod}") or name == ep.ipv4:
                return ep
        return None

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": namespace, **self.namespaces.get(namespace, {})}


@dataclass(frozen=True)
class Peer:
    """The other end of a packet: exactly one of pod, reserved name, or external address."""

    pod: Endpoint | None = None
    reserved: str | None = None
    address: ipaddress.IPv4Address | None = None

    def labels(self, lab: RefLab) -> list[tuple[str, str, str]]:
        """(source, key, value) triples: a pod's identity labels, or the reserved label of the rest."""
        if self.pod is not None:
            ns = self.pod.namespace
            labels = [("k8s", k, v) for k, v in self.pod.pod_labels.items()]
            labels.append(("k8s", POD_NAMESPACE, ns))
            labels += [("k8s", NAMESPACE_LABELS + k, v) for k, v in lab.namespace_labels(ns).items()]
            return labels
        return [("reserved", self.reserved or "world", "")]


def peer_of(lab: RefLab, name: str) -> Peer:
    ep = lab.pod(name)
    if ep is not None:
        return Peer(pod=ep)
    if name in RESERVED_PEERS:
        return Peer(reserved=name)
    return Peer(address=ipaddress.IPv4Address(name))


# ---- label selectors ---------------------------------------------------------------------------------


def _requirements(selector: Mapping[str, Any] | None, *, cilium: bool, key_prefix: str = ""
                  ) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(source, key, operator, values) of a LabelSelector; a key without source is "any" (Cilium) or k8s."""
    def split(key: str) -> tuple[str, str]:
        if cilium and ":" in key:
            source, _, name = key.partition(":")
            return source, name
        return ("any" if cilium else "k8s"), key_prefix + key

    out: list[tuple[str, str, str, tuple[str, ...]]] = []
    for key, value in ((selector or {}).get("matchLabels") or {}).items():
        source, name = split(key)
        out.append((source, name, "In", ("" if value is None else str(value),)))
    for expr in (selector or {}).get("matchExpressions") or []:
        source, name = split(expr["key"])
        out.append((source, name, expr["operator"], tuple(expr.get("values") or ())))
    return out


def _selects(requirements: Iterable[tuple[str, str, str, tuple[str, ...]]],
             labels: list[tuple[str, str, str]]) -> bool:
    """Kubernetes label-selector semantics; a source "any" matches a key of any source."""
    for source, key, operator, values in requirements:
        present = [v for s, k, v in labels if k == key and source in ("any", s)]
        ok = {"Exists": bool(present), "DoesNotExist": not present,
              "In": any(v in values for v in present), "NotIn": not any(v in values for v in present)}[operator]
        if not ok:
            return False
    return True


# ---- the parts of a policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    kind: str                                  # CNP, CCNP or KNP
    namespace: str                             # "" for clusterwide
    body: Mapping[str, Any]


def specs_of(docs: Iterable[Mapping[str, Any]]) -> list[Spec]:
    specs = []
    for doc in docs:
        kind = {"CiliumNetworkPolicy": "CNP", "CiliumClusterwideNetworkPolicy": "CCNP",
                "NetworkPolicy": "KNP"}[doc["kind"]]
        namespace = "" if kind == "CCNP" else (doc.get("metadata") or {}).get("namespace") or "default"
        bodies = ([doc["spec"]] if doc.get("spec") else []) + list(doc.get("specs") or [])
        specs += [Spec(kind, namespace, body) for body in bodies]
    return specs


def _subject(lab: RefLab, spec: Spec, ep: Endpoint) -> bool:
    """Whether the spec selects the endpoint (a namespaced policy only in its namespace)."""
    if spec.namespace and ep.namespace != spec.namespace:
        return False
    if spec.kind == "KNP":
        pod_labels = [("k8s", k, v) for k, v in ep.pod_labels.items()]
        return _selects(_requirements(spec.body.get("podSelector"), cilium=False), pod_labels)
    return _selects(_requirements(spec.body.get("endpointSelector"), cilium=True), Peer(pod=ep).labels(lab))


def _enforces(spec: Spec, direction: str) -> bool:
    if spec.kind == "KNP":
        types = spec.body.get("policyTypes")
        if types is None:
            types = ["Ingress"] + (["Egress"] if spec.body.get("egress") else [])
        return direction.capitalize() in types
    default = spec.body.get("enableDefaultDeny") or {}
    if direction in default:
        return bool(default[direction])
    return bool(spec.body.get(direction) or spec.body.get(direction + "Deny"))


def _cilium_selector_matches(lab: RefLab, spec: Spec, selector: Mapping[str, Any] | None, peer: Peer) -> bool:
    reqs = _requirements(selector, cilium=True)
    if not any(source == "reserved" for source, *_ in reqs):
        # Without reserved labels a selector selects pods, limited to the policy's namespace unless it
        # names the namespace or selects namespaces by their labels (clusterwide: any namespace).
        if peer.pod is None:
            return False
        names_namespace = any(key == POD_NAMESPACE or key.startswith(NAMESPACE_LABELS) for _, key, _, _ in reqs)
        if spec.namespace and not names_namespace and peer.pod.namespace != spec.namespace:
            return False
    return _selects(reqs, peer.labels(lab))


def _in_block(address: ipaddress.IPv4Address, block: Mapping[str, Any]) -> bool:
    return address in ipaddress.IPv4Network(block["cidr"]) and not any(
        address in ipaddress.IPv4Network(e) for e in block.get("except") or ())


def _ipblock_matches(lab: RefLab, block: Mapping[str, Any], peer: Peer) -> bool:
    """Kubernetes' ipBlock: addresses in range; a pod in range, if every pod of its identity is in range."""
    if peer.address is not None:
        return _in_block(peer.address, block)
    if peer.pod is None:
        return False
    same_identity = [ep for ep in lab.endpoints if ep.identity == peer.pod.identity]
    return all(_in_block(ipaddress.IPv4Address(ep.ipv4), block) for ep in same_identity)


def _knp_peer_matches(lab: RefLab, spec: Spec, item: Mapping[str, Any], peer: Peer) -> bool:
    if "ipBlock" in item:
        return _ipblock_matches(lab, item["ipBlock"], peer)
    if peer.pod is None:
        return False
    if "namespaceSelector" in item:
        ns_labels = [("k8s", k, v) for k, v in lab.namespace_labels(peer.pod.namespace).items()]
        if not _selects(_requirements(item["namespaceSelector"], cilium=False), ns_labels):
            return False
    elif peer.pod.namespace != spec.namespace:
        return False
    pod_labels = [("k8s", k, v) for k, v in peer.pod.pod_labels.items()]
    return _selects(_requirements(item.get("podSelector"), cilium=False), pod_labels)


def _cnp_peers(lab: RefLab, spec: Spec, rule: Mapping[str, Any], word: str, peer: Peer) -> bool | None:
    """Whether the rule's L3 part selects the peer; None when the rule names no peers (any peer)."""
    endpoints = rule.get(f"{word}Endpoints") or []
    entities = rule.get(f"{word}Entities") or []
    cidrs = [{"cidr": c} for c in rule.get(f"{word}CIDR") or []] + list(rule.get(f"{word}CIDRSet") or [])
    if not (endpoints or entities or cidrs):
        return None
    return (any(_cilium_selector_matches(lab, spec, sel, peer) for sel in endpoints)
            or any(ENTITY_PEERS[e](peer) for e in entities)
            # Cilium's CIDR rules describe peers outside the cluster: never a pod, whatever the prefix.
            or (peer.address is not None and any(_in_block(peer.address, c) for c in cidrs)))


def _port_matches(lab: RefLab, item: Mapping[str, Any], default_protocol: str, protocol: str, port: int,
                  named_on: list[Endpoint]) -> bool:
    """One {port, endPort, protocol} item. A named port is looked up on ``named_on`` (the pods that hold it)."""
    declared = item.get("protocol", default_protocol)
    if protocol not in (("TCP", "UDP") if declared == "ANY" else (declared,)):
        return False
    value = item.get("port")
    if isinstance(value, str) and not value.strip().isdigit():
        return any(ep.named_ports.get(value) == (port, protocol) for ep in named_on)
    first = int(value or 0)
    if first == 0:
        return True                                   # no port, or 0: every port of the protocol
    return first <= port <= int(item.get("endPort") or first)


def _rule_matches(lab: RefLab, spec: Spec, rule: Mapping[str, Any] | None, direction: str,
                  subject: Endpoint, peer: Peer, protocol: str, port: int) -> bool:
    rule = rule or {}
    # ingress names the subject's own container ports; egress those of the peer's identity's pods
    if direction == "ingress":
        named_on = [subject]
    elif peer.pod is not None:
        named_on = [ep for ep in lab.endpoints if ep.identity == peer.pod.identity]
    else:
        named_on = []
    if spec.kind == "KNP":
        items = rule.get("from" if direction == "ingress" else "to") or []
        if items and not any(_knp_peer_matches(lab, spec, item, peer) for item in items):
            return False
        ports = rule.get("ports") or []
        return not ports or any(_port_matches(lab, p, "TCP", protocol, port, named_on) for p in ports)
    peers = _cnp_peers(lab, spec, rule, "from" if direction == "ingress" else "to", peer)
    port_items = [p for item in rule.get("toPorts") or [] for p in item.get("ports") or []]
    if peers is None and not port_items:
        return False                                  # `- {}`: allows (or denies) nothing
    if peers is False:
        return False
    return not port_items or any(_port_matches(lab, p, "ANY", protocol, port, named_on) for p in port_items)


# ---- verdicts ---------------------------------------------------------------------------------------


def direction_verdict(lab: RefLab, docs: Iterable[Mapping[str, Any]], pod: str, direction: str, peer_name: str,
                      protocol: str, port: int) -> Verdict:
    """The verdict of ``pod``'s ``direction`` for a new connection with ``peer_name``."""
    subject = lab.pod(pod)
    assert subject is not None, f"{pod} is no pod of the lab"
    peer = peer_of(lab, peer_name)
    selecting = [s for s in specs_of(docs) if _subject(lab, s, subject)]
    denies = [(s, r) for s in selecting if s.kind != "KNP" for r in s.body.get(direction + "Deny") or []]
    if any(_rule_matches(lab, s, r, direction, subject, peer, protocol, port) for s, r in denies):
        return "deny"
    allows = [(s, r) for s in selecting for r in s.body.get(direction) or []]
    if any(_rule_matches(lab, s, r, direction, subject, peer, protocol, port) for s, r in allows):
        return "allow"
    return "drop" if any(_enforces(s, direction) for s in selecting) else "pass"


def verdict(lab: RefLab, docs: Iterable[Mapping[str, Any]], packet: Packet) -> Verdict:
    """The verdict of the packet at the end its ``direction`` names."""
    pod, peer = (packet.dst, packet.src) if packet.direction == "ingress" else (packet.src, packet.dst)
    return direction_verdict(lab, docs, pod, packet.direction, peer, packet.protocol, packet.port)


def admitted(lab: RefLab, docs: Iterable[Mapping[str, Any]], src: str, dst: str, protocol: str,
             port: int) -> bool:
    """Both ends judge: the source's egress (if a pod) and the destination's ingress (if a pod) must admit it."""
    docs = list(docs)
    ends: tuple[tuple[Literal["ingress", "egress"], str], ...] = (("egress", src), ("ingress", dst))
    for direction, end in ends:
        if lab.pod(end) is not None and verdict(lab, docs, Packet(src, dst, protocol, port, direction)) in (
                "deny", "drop"):
            return False
    return True
