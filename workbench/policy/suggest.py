"""`policy suggest`: least-privilege CiliumNetworkPolicy from the traffic a lab has seen.

Input: the records of :func:`workbench.policy.replay.connection_starts` (the
first packet of each connection and each HTTP request). Only traffic that
went through counts: verdict FORWARDED or REDIRECTED, and AUDIT (what audit
mode let pass is what a policy must allow).

Output: one CiliumNetworkPolicy per workload, in the workload's namespace. A
workload is the pods with one label set (their identity's ``k8s:`` labels
without the namespace, Cilium's internal labels and ``pod-template-hash``),
so the replicas of a Deployment share a policy. Its ``ingress`` has one rule
per peer that opened connections to it, its ``egress`` one per peer it opened
connections to:

- a pod peer is selected by its labels (``io.kubernetes.pod.namespace`` added
  when it lives in another namespace), never by its address;
- an address outside the lab by its ``/32`` (``fromCIDR``/``toCIDR``), the
  node by the ``host`` entity;
- ``toPorts`` lists the ports and protocols seen; a TCP port on which the L7
  proxy recorded requests gets ``rules.http`` with each method and path seen
  (the path as a regular expression matching exactly that path).

A direction in which a workload had no traffic is left out, so it stays open
(add ``ingress: [{}]`` or ``egress: [{}]`` to close it). Pods without labels
get no policy (an empty selector would select their whole namespace).

Example::

    >>> docs = suggest_policies([{"verdict": "FORWARDED", "event_type": "policy-verdict",
    ...     "src_ip": "10.0.0.2", "dst_ip": "10.0.0.1", "dst_port": 80, "protocol": "TCP",
    ...     "src_identity": 257, "dst_identity": 256, "src_pod": "tiefighter", "dst_pod": "deathstar",
    ...     "src_namespace": "default", "dst_namespace": "default",
    ...     "src_labels": ["k8s:class=tiefighter"], "dst_labels": ["k8s:class=deathstar"]}])
    >>> [d["metadata"]["name"] for d in docs]
    ['deathstar', 'tiefighter']
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from workbench.lab.model import ID_HEALTH, ID_HOST, NAMESPACE_LABEL, parse_label
from workbench.policy.replay import request_path

PASSED = ("FORWARDED", "REDIRECTED", "AUDIT")
INTERNAL_LABEL_PREFIX = "io.cilium."
TEMPLATE_HASH = "pod-template-hash"
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")
_NAME_CHARS = re.compile(r"[^a-z0-9-]+")
NAME_LABELS = ("app", "class", "app.kubernetes.io/name", "name", "k8s-app")

Workload = tuple[str, tuple[tuple[str, str], ...]]   # namespace, sorted (key, value) labels
Peer = tuple[str, Any]                               # ("pod", Workload) | ("cidr", "1.2.3.4/32") | ("entity", "host")


def workload_labels(labels: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """A pod's identity labels -> the labels that select its workload (module docstring)."""
    out = set()
    for label in labels:
        source, key, value = parse_label(str(label))
        if source != "k8s" or key == NAMESPACE_LABEL or key == TEMPLATE_HASH or key.startswith(INTERNAL_LABEL_PREFIX):
            continue
        out.add((key, value))
    return tuple(sorted(out))


def exact_path(path: str) -> str:
    """A regular expression (RE2, matched against the whole path) that matches exactly ``path``."""
    return _RE2_SPECIAL.sub(r"\\\1", path)


def _side(record: Mapping[str, Any], side: str) -> Peer | None:
    if record.get(f"{side}_pod"):
        labels = workload_labels(record.get(f"{side}_labels") or ())
        return ("pod", (str(record.get(f"{side}_namespace") or "default"), labels))
    identity = int(record.get(f"{side}_identity") or 0)
    if identity == ID_HOST:
        return ("entity", "host")
    if identity == ID_HEALTH:
        return ("entity", "health")
    address = record.get(f"{side}_ip")
    return ("cidr", f"{address}/32") if address else None


def _name(workload: Workload, taken: set[tuple[str, str]]) -> str:
    namespace, labels = workload
    values = dict(labels)
    base = next((values[k] for k in NAME_LABELS if values.get(k)), "-".join(v for _, v in labels) or "all")
    base = _NAME_CHARS.sub("-", base.lower()).strip("-")[:50] or "workload"
    name, n = base, 1
    while (namespace, name) in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add((namespace, name))
    return name


def _peer_rule(peer: Peer, subject_ns: str, ingress: bool) -> dict[str, Any]:
    kind, value = peer
    prefix = "from" if ingress else "to"
    if kind == "entity":
        return {f"{prefix}Entities": [value]}
    if kind == "cidr":
        return {f"{prefix}CIDR": [value]}
    namespace, labels = value
    match = dict(labels)
    if namespace != subject_ns:
        match[f"k8s:{NAMESPACE_LABEL}"] = namespace
    return {f"{prefix}Endpoints": [{"matchLabels": match}]}


def _to_ports(ports: set[tuple[int, str]], http: Mapping[int, set[tuple[str, str]]]) -> list[dict[str, Any]]:
    plain = [{"port": str(p), "protocol": proto} for p, proto in sorted(ports)
             if not (proto == "TCP" and p in http)]
    items: list[dict[str, Any]] = [{"ports": plain}] if plain else []
    for port in sorted(p for p, proto in ports if proto == "TCP" and p in http):
        rules = [{"method": m, "path": exact_path(path)} for m, path in sorted(http[port])]
        items.append({"ports": [{"port": str(port), "protocol": "TCP"}], "rules": {"http": rules}})
    return items


def suggest_policies(records: Iterable[Mapping[str, Any]], namespace: str | None = None) -> list[dict[str, Any]]:
    """CiliumNetworkPolicy documents (dicts) allowing exactly the passed traffic of ``records``.

    ``namespace``: only workloads of that namespace get a policy.
    """
    # subject workload -> direction -> peer -> ports; and (subject, peer, port) -> HTTP (method, path) seen
    seen: dict[Workload, dict[str, dict[Peer, set[tuple[int, str]]]]] = defaultdict(
        lambda: {"ingress": defaultdict(set), "egress": defaultdict(set)})
    http: dict[tuple[Workload, Peer], dict[int, set[tuple[str, str]]]] = defaultdict(lambda: defaultdict(set))
    for record in records:
        if str(record.get("verdict")) not in PASSED:
            continue
        src, dst = _side(record, "src"), _side(record, "dst")
        if src is None or dst is None:
            continue
        port = (int(record["dst_port"]), str(record["protocol"]).upper())
        if dst[0] == "pod":
            seen[dst[1]]["ingress"][src].add(port)
            if record.get("http_method"):
                path = request_path(str(record.get("http_url") or "/"))
                http[(dst[1], src)][port[0]].add((str(record["http_method"]), path))
        if src[0] == "pod":
            seen[src[1]]["egress"][dst].add(port)
    docs = []
    taken: set[tuple[str, str]] = set()
    for workload in sorted(seen):
        ns, labels = workload
        if (namespace is not None and ns != namespace) or not labels:
            continue   # a pod without labels cannot be selected alone: {} would select its whole namespace
        spec: dict[str, Any] = {"endpointSelector": {"matchLabels": dict(labels)}}
        for direction in ("ingress", "egress"):
            peers = seen[workload][direction]
            rules = []
            for peer in sorted(peers, key=repr):
                rule = _peer_rule(peer, ns, direction == "ingress")
                rule["toPorts"] = _to_ports(peers[peer], http.get((workload, peer), {}) if direction == "ingress"
                                            else {})
                rules.append(rule)
            if rules:
                spec[direction] = rules
        docs.append({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                     "metadata": {"name": _name(workload, taken), "namespace": ns}, "spec": spec})
    return docs


def to_yaml(docs: list[dict[str, Any]]) -> str:
    """Multi-document YAML, fields in the order Kubernetes users read them."""
    import yaml

    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
