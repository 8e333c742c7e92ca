"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy (cilium.io/v2) -> typed rules.

Namespacing follows Cilium's parser: a namespaced policy's endpointSelector
always selects in the policy's namespace; its fromEndpoints/toEndpoints
selectors get the policy's namespace added unless they name
``io.kubernetes.pod.namespace`` themselves, select on namespace labels
(``io.cilium.k8s.namespace.labels.*``) or on reserved labels. In a
clusterwide policy a peer selector without a namespace selects pods of any
namespace (never reserved identities).

An ingress rule with neither peers nor ports (``ingress: [{}]``) allows
nothing but still makes the subject default-deny, as in Cilium.

DNS (:mod:`workbench.policy.fqdn`): ``toFQDNs`` selects peers by DNS name in
egress allow rules, alone (Cilium refuses other L3 selectors in the same
rule) or with ``toPorts``; ``toPorts[].rules.dns`` sends the pod's DNS
queries on those ports through the DNS proxy, egress only, with a single
port per item.
"""

from __future__ import annotations

from typing import Any

from workbench.lab.model import NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, Direction
from workbench.policy.cidr import CIDRRule, parse_cidr, parse_excepts
from workbench.policy.fields import DocRef, Fields, join
from workbench.policy.fqdn import FqdnSelector, parse_fqdn_selector
from workbench.policy.l7 import HttpRule, parse_port_rules
from workbench.policy.ports import PortRange, parse_port
from workbench.policy.rules import ENTITIES, Peers, PolicyRule, PolicySpec
from workbench.policy.selectors import LabelSelector, in_some_namespace, namespace_is, parse_selector

CNP_PROTOCOLS: dict[str, tuple[int, ...]] = {"TCP": (6,), "UDP": (17,), "ANY": (6, 17)}

_SPEC_FIELDS = {"endpointSelector", "ingress", "ingressDeny", "egress", "egressDeny",
                "description", "labels", "enableDefaultDeny"}
_SPEC_UNSUPPORTED = {
    "nodeSelector": "host policies (nodeSelector) are not supported; use endpointSelector",
    "log": "policy logging is not supported",
}
_COMMON_UNSUPPORTED = {
    "icmps": "ICMP rules are not supported yet",
    "authentication": "mutual authentication is not supported",
}
_INGRESS_UNSUPPORTED = {
    **_COMMON_UNSUPPORTED,
    "fromRequires": "fromRequires is not supported (deprecated in Cilium)",
    "fromNodes": "fromNodes is not supported (single-node lab)",
    "fromGroups": "fromGroups (cloud provider groups) is not supported",
    "toEndpoints": "toEndpoints belongs in egress rules, not ingress",
    "toFQDNs": "toFQDNs belongs in egress rules, not ingress",
}
_EGRESS_UNSUPPORTED = {
    **_COMMON_UNSUPPORTED,
    "toRequires": "toRequires is not supported (deprecated in Cilium)",
    "toNodes": "toNodes is not supported (single-node lab)",
    "toGroups": "toGroups (cloud provider groups) is not supported",
    "toServices": "toServices is not supported; select the backends with toEndpoints",
    "fromEndpoints": "fromEndpoints belongs in ingress rules, not egress",
}
_PORT_RULE_UNSUPPORTED = {
    "listener": "Envoy listeners are not supported",
    "originatingTLS": "TLS interception is not supported",
    "terminatingTLS": "TLS interception is not supported",
    "serverNames": "TLS SNI matching is not supported",
}
_CIDR_SET_UNSUPPORTED = {
    "cidrGroupRef": "CiliumCIDRGroup references are not supported; list the CIDRs",
    "cidrGroupSelector": "CiliumCIDRGroup selectors are not supported; list the CIDRs",
}

# (field name, direction, deny) for every rule list a spec may carry.
_SECTIONS: tuple[tuple[str, Direction, bool], ...] = (
    ("ingress", "ingress", False),
    ("ingressDeny", "ingress", True),
    ("egress", "egress", False),
    ("egressDeny", "egress", True),
)


def parse_cilium_spec(doc: DocRef, path: str, value: Any, namespace: str) -> PolicySpec:
    """One element of ``spec``/``specs`` -> :class:`PolicySpec` (``namespace`` "" = clusterwide)."""
    fields = Fields(doc, path, value, allowed=_SPEC_FIELDS, unsupported=_SPEC_UNSUPPORTED)
    if not fields.has("endpointSelector"):
        raise doc.error(fields.at("endpointSelector"), "is required (use {} to select every endpoint)")
    subject = parse_selector(doc, fields.at("endpointSelector"), fields.value["endpointSelector"])
    if namespace:
        named = subject.namespace_values()
        if named is not None and tuple(named) != (namespace,):
            raise doc.error(fields.at("endpointSelector"),
                            f"selects namespace {','.join(named)} but a namespaced policy only applies in "
                            f"its own namespace {namespace!r}",
                            hint="use a CiliumClusterwideNetworkPolicy or move the policy")
        subject = LabelSelector(tuple(r for r in subject.requirements if r.key != NAMESPACE_LABEL))
        subject = subject.with_requirement(namespace_is(namespace))
    _check_description(doc, fields)

    rules: list[PolicyRule] = []
    has_rules: set[Direction] = set()
    for section, direction, deny in _SECTIONS:
        for rule_path, rule in fields.items(section):
            has_rules.add(direction)
            rules.extend(_parse_rule(doc, rule_path, rule, direction, deny, namespace))

    enforce = set(has_rules)
    default_deny = fields.mapping("enableDefaultDeny")
    if default_deny is not None:
        dd = Fields(doc, fields.at("enableDefaultDeny"), default_deny, allowed={"ingress", "egress"})
        for direction in ("ingress", "egress"):
            flag = dd.boolean(direction)
            if flag is False:
                enforce.discard(direction)  # type: ignore[arg-type]
            elif flag is True:
                enforce.add(direction)  # type: ignore[arg-type]
    return PolicySpec(subject, frozenset(enforce), tuple(rules), path)


def _check_description(doc: DocRef, fields: Fields) -> None:
    fields.string("description")
    # Rule labels only name the rule (Cilium uses them for `cilium policy get`); nothing to enforce.
    fields.items("labels")


def _parse_rule(doc: DocRef, path: str, value: Any, direction: Direction, deny: bool,
                namespace: str) -> list[PolicyRule]:
    peer_word = "from" if direction == "ingress" else "to"
    l3_fields = [f"{peer_word}Endpoints", f"{peer_word}Entities", f"{peer_word}CIDR", f"{peer_word}CIDRSet"]
    allowed = {*l3_fields, "toPorts"}
    unsupported = dict(_INGRESS_UNSUPPORTED if direction == "ingress" else _EGRESS_UNSUPPORTED)
    if direction == "egress":
        if deny:
            unsupported["toFQDNs"] = "toFQDNs is not allowed in deny rules (Cilium cannot deny by DNS name)"
        else:
            allowed.add("toFQDNs")
    if value is None or value == {}:
        return []  # `- {}`: default-deny for the direction, allows nothing
    fields = Fields(doc, path, value, allowed=allowed, unsupported=unsupported)

    selectors = tuple(
        _peer_selector(doc, item_path, item, namespace)
        for item_path, item in fields.items(f"{peer_word}Endpoints")
    )
    entities = tuple(_entity(doc, item_path, item) for item_path, item in fields.items(f"{peer_word}Entities"))
    cidrs = [CIDRRule(parse_cidr(doc, item_path, item)) for item_path, item in fields.items(f"{peer_word}CIDR")]
    for item_path, item in fields.items(f"{peer_word}CIDRSet"):
        cidrs.append(_cidr_set(doc, item_path, item))
    fqdns = tuple(dict.fromkeys(parse_fqdn_selector(doc, item_path, item)
                                for item_path, item in fields.items("toFQDNs")))
    has_l3 = any(fields.value.get(name) for name in l3_fields)
    if fqdns and has_l3:
        other = next(name for name in l3_fields if fields.value.get(name))
        raise doc.error(fields.at("toFQDNs"), f"cannot be combined with {other} in one rule (Cilium refuses it)",
                        hint="write the toFQDNs selectors in an egress rule of their own")

    ports, l7_groups = _to_ports(doc, fields, direction, deny)
    if not has_l3 and not fqdns and not ports and not l7_groups:
        return []
    peers = Peers(selectors, entities, tuple(cidrs), fqdns) if has_l3 or fqdns else None
    # A toPorts item with L7 rules becomes a rule of its own: its ports are proxied, the others are not.
    rules = [PolicyRule(direction, peers, tuple(l7_ports), deny, path, http, dns)
             for l7_ports, http, dns in l7_groups]
    if ports or not l7_groups:
        rules.insert(0, PolicyRule(direction, peers, tuple(ports), deny, path))
    return rules


def _peer_selector(doc: DocRef, path: str, value: Any, namespace: str) -> LabelSelector:
    if value is None:
        value = {}
    selector = parse_selector(doc, path, value)
    if selector.has_source("reserved"):
        return selector  # reserved identities have no namespace
    if selector.has_key(NAMESPACE_LABEL):
        return selector
    if not namespace:
        return selector.with_requirement(in_some_namespace())
    if selector.has_key_prefix(NAMESPACE_LABELS_PREFIX):
        return selector  # selects namespaces by their labels: across namespaces
    return selector.with_requirement(namespace_is(namespace))


def _entity(doc: DocRef, path: str, value: Any) -> str:
    if value not in ENTITIES:
        raise doc.error(path, f"unsupported entity {value!r} (use one of {', '.join(ENTITIES)})")
    return str(value)


def _cidr_set(doc: DocRef, path: str, value: Any) -> CIDRRule:
    fields = Fields(doc, path, value, allowed={"cidr", "except"}, unsupported=_CIDR_SET_UNSUPPORTED)
    if not fields.has("cidr"):
        raise doc.error(fields.at("cidr"), "is required")
    cidr = parse_cidr(doc, fields.at("cidr"), fields.value["cidr"])
    return CIDRRule(cidr, parse_excepts(doc, fields.at("except"), cidr, fields.items("except")))


L7Group = tuple[list[PortRange], tuple[HttpRule, ...] | None, tuple[FqdnSelector, ...] | None]


def _to_ports(doc: DocRef, fields: Fields, direction: Direction,
              deny: bool) -> tuple[list[PortRange], list[L7Group]]:
    """(L3/L4 ports, [(ports, http rules, dns rules)] of the toPorts items that carry L7 rules)."""
    ports: list[PortRange] = []
    l7_groups: list[L7Group] = []
    for rule_path, rule in fields.items("toPorts"):
        port_rule = Fields(doc, rule_path, rule, allowed={"ports", "rules"}, unsupported=_PORT_RULE_UNSUPPORTED)
        items = port_rule.items("ports")
        if not items:
            raise doc.error(port_rule.at("ports"), "needs at least one port")
        http: tuple[HttpRule, ...] | None = None
        dns: tuple[FqdnSelector, ...] | None = None
        if port_rule.has("rules"):
            if deny:
                raise doc.error(port_rule.at("rules"), "L7 rules are not allowed in deny policies")
            http, dns = parse_port_rules(doc, port_rule.at("rules"), port_rule.value["rules"])
            if dns is not None and direction == "ingress":
                raise doc.error(join(port_rule.at("rules"), "dns"),
                                "DNS rules are only allowed in egress rules (the DNS proxy judges a pod's own "
                                "queries)")
        group: list[PortRange] = []
        for item_path, item in items:
            if http is not None:
                protocol = item.get("protocol") if isinstance(item, dict) else None
                if protocol != "TCP":
                    why = "has no protocol" if protocol is None else f"has protocol {protocol}"
                    raise doc.error(f"{item_path}.protocol", f"L7 (HTTP) rules need protocol TCP; this port {why}")
            parsed = parse_port(doc, item_path, item, protocols=CNP_PROTOCOLS, default_protocol="ANY",
                                zero_means_any=True)
            if dns is not None:
                _check_dns_port(doc, item_path, item)
            group.extend(parsed)
        if http is None and dns is None:
            ports.extend(group)
        else:
            l7_groups.append((group, http, dns))
    return ports, l7_groups


def _check_dns_port(doc: DocRef, path: str, item: Any) -> None:
    """DNS rules judge queries to one port (the DNS server's): no "any port", no range."""
    if not isinstance(item, dict):
        return
    if item.get("endPort") is not None:
        raise doc.error(join(path, "endPort"), "DNS rules need a single port, not a range (as Cilium's L7 rules)")
    if str(item.get("port") or "0") == "0":
        raise doc.error(join(path, "port"), "DNS rules need the DNS server's port (usually 53), not any port")
