"""Kubernetes NetworkPolicy (networking.k8s.io/v1) -> typed rules.

Semantics as Kubernetes defines them: ``policyTypes`` defaults to Ingress,
plus Egress when egress rules are present; a listed type with no rules denies
everything in that direction; a rule with no ``from``/``to`` allows every
peer and one with no ``ports`` every port (so ``ingress: [{}]`` allows all).
A peer's podSelector alone selects pods of the policy's namespace;
namespaceSelector selects pods of the namespaces whose labels match (always
including ``kubernetes.io/metadata.name``), and both together intersect.
An ``ipBlock`` selects the pods whose IP is in range (minus ``except``) as well
as the addresses outside the lab; a port may be a name ("http"), resolved per
pod from its containerPort names.
"""

from __future__ import annotations

from typing import Any

from workbench.lab.model import NAMESPACE_LABELS_PREFIX, Direction
from workbench.policy.cidr import CIDRRule, parse_cidr, parse_excepts
from workbench.policy.fields import DocRef, Fields
from workbench.policy.ports import PortRange, parse_port
from workbench.policy.rules import Peers, PolicyRule, PolicySpec
from workbench.policy.selectors import LabelSelector, in_some_namespace, namespace_is, parse_selector

KNP_PROTOCOLS: dict[str, tuple[int, ...]] = {"TCP": (6,), "UDP": (17,)}
_POLICY_TYPES: dict[str, Direction] = {"Ingress": "ingress", "Egress": "egress"}


def parse_network_policy_spec(doc: DocRef, path: str, value: Any, namespace: str) -> PolicySpec:
    """``spec`` of a NetworkPolicy -> :class:`PolicySpec`."""
    fields = Fields(doc, path, value, allowed={"podSelector", "policyTypes", "ingress", "egress"})
    if "podSelector" not in fields.value:
        raise doc.error(fields.at("podSelector"), "is required (use {} to select every pod in the namespace)")
    subject = _selector(doc, fields.at("podSelector"), fields.value["podSelector"])
    subject = subject.with_requirement(namespace_is(namespace))

    enforce: set[Direction] = set()
    type_items = fields.items("policyTypes")
    for item_path, item in type_items:
        if not isinstance(item, str) or item not in _POLICY_TYPES:   # a list or mapping is unhashable
            raise doc.error(item_path, f"unknown policy type {item!r} (use Ingress or Egress)")
        if _POLICY_TYPES[item] in enforce:
            raise doc.error(item_path, f"policy type {item} is listed twice")
        enforce.add(_POLICY_TYPES[item])
    if not type_items:
        enforce.add("ingress")
        if fields.raw("egress"):
            enforce.add("egress")

    rules: list[PolicyRule] = []
    for section, direction, peer_word in (("ingress", "ingress", "from"), ("egress", "egress", "to")):
        items = fields.items(section)
        if items and direction not in enforce:
            raise doc.error(fields.at(section), f"has rules but policyTypes does not list "
                            f"{section.capitalize()}, so Kubernetes would ignore them")
        for rule_path, rule in items:
            rules.append(_parse_rule(doc, rule_path, rule, direction, peer_word, namespace))  # type: ignore[arg-type]
    return PolicySpec(subject, frozenset(enforce), tuple(rules), path)


def _selector(doc: DocRef, path: str, value: Any, *, key_prefix: str = "") -> LabelSelector:
    return parse_selector(doc, path, {} if value is None else value, source_prefixes=False,
                          default_source="k8s", key_prefix=key_prefix)


def _parse_rule(doc: DocRef, path: str, value: Any, direction: Direction, peer_word: str,
                namespace: str) -> PolicyRule:
    fields = Fields(doc, path, {} if value is None else value, allowed={peer_word, "ports"})
    selectors: list[LabelSelector] = []
    cidrs: list[CIDRRule] = []
    peer_items = fields.items(peer_word)
    for peer_path, peer in peer_items:
        selector, cidr = _parse_peer(doc, peer_path, peer, namespace)
        if selector is not None:
            selectors.append(selector)
        if cidr is not None:
            cidrs.append(cidr)
    ports: list[PortRange] = []
    for port_path, port in fields.items("ports"):
        ports.extend(parse_port(doc, port_path, port, protocols=KNP_PROTOCOLS, default_protocol="TCP",
                                zero_means_any=False))
    peers = Peers(tuple(selectors), (), tuple(cidrs)) if peer_items else None
    return PolicyRule(direction, peers, tuple(ports), False, path)


def _parse_peer(doc: DocRef, path: str, value: Any,
                namespace: str) -> tuple[LabelSelector | None, CIDRRule | None]:
    fields = Fields(doc, path, value, allowed={"podSelector", "namespaceSelector", "ipBlock"})
    if not fields.value:
        raise doc.error(path, "a peer needs podSelector, namespaceSelector or ipBlock")
    if "ipBlock" in fields.value:
        if len(fields.value) > 1:
            raise doc.error(fields.at("ipBlock"), "may not be combined with podSelector or namespaceSelector")
        block = Fields(doc, fields.at("ipBlock"), fields.value["ipBlock"], allowed={"cidr", "except"})
        if not block.has("cidr"):
            raise doc.error(block.at("cidr"), "is required")
        cidr = parse_cidr(doc, block.at("cidr"), block.value["cidr"])
        # Kubernetes' meaning: pods whose IP is in range are selected too (the compiler resolves them).
        return None, CIDRRule(cidr, parse_excepts(doc, block.at("except"), cidr, block.items("except")), pods=True)

    if "podSelector" in fields.value:
        selector = _selector(doc, fields.at("podSelector"), fields.value["podSelector"])
    else:
        selector = LabelSelector()
    if "namespaceSelector" in fields.value:
        # Namespace labels are part of a pod's identity labels (Cilium's namespace-labels prefix).
        ns_selector = _selector(doc, fields.at("namespaceSelector"), fields.value["namespaceSelector"],
                                key_prefix=NAMESPACE_LABELS_PREFIX)
        selector = LabelSelector(selector.requirements + ns_selector.requirements)
        selector = selector.with_requirement(in_some_namespace())
    else:
        selector = selector.with_requirement(namespace_is(namespace))
    return selector, None
