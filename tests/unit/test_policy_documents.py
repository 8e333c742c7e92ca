"""Stage 1: loading and validating policy documents; every bad input names document, field path and why."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import workbench as wb
from workbench.errors import NotFoundError, ValidationError
from workbench.policy import load_documents
from workbench.policy.ports import PortRange
from workbench.policy.selectors import Requirement

RULE1 = wb.example("rule1.yaml").read_text()


def cnp(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p"},
            "spec": {"endpointSelector": {}, **spec}}


def knp(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "np"},
            "spec": {"podSelector": {}, **spec}}


def port_rule(**port: Any) -> dict[str, Any]:
    return {"toPorts": [{"ports": [port]}]}


def test_rule1_loads_into_typed_rules() -> None:
    [doc] = load_documents(RULE1)
    assert (doc.kind, doc.name, doc.namespace, doc.key) == ("CiliumNetworkPolicy", "rule1", "default", "default/rule1")
    [spec] = doc.specs
    assert spec.enforce == {"ingress"}
    assert set(spec.subject.requirements) == {
        Requirement("any", "org", "In", ("empire",)), Requirement("any", "class", "In", ("deathstar",)),
        Requirement("k8s", "io.kubernetes.pod.namespace", "In", ("default",))}
    [rule] = spec.rules
    assert rule.direction == "ingress" and not rule.deny and rule.path == "spec.ingress[0]"
    assert rule.ports == (PortRange(6, 80, 80),)
    assert rule.peers is not None
    [peer] = rule.peers.selectors
    assert set(peer.requirements) == {Requirement("any", "org", "In", ("empire",)),
                                      Requirement("k8s", "io.kubernetes.pod.namespace", "In", ("default",))}


def test_sources_text_path_file_dict_list(tmp_path: Path) -> None:
    path = tmp_path / "rule1.yaml"
    path.write_text(RULE1)
    as_dict = load_documents(RULE1)[0].raw
    for source in (RULE1, path, str(path), as_dict, [as_dict]):
        [doc] = load_documents(source)
        assert doc.key == "default/rule1"
    with pytest.raises(NotFoundError, match="does-not-exist.yaml"):
        load_documents(str(tmp_path / "does-not-exist.yaml"))


def test_multi_document_yaml_and_kind_list() -> None:
    text = RULE1 + "---\n" + RULE1.replace("rule1", "rule2") + "---\n"
    assert [d.key for d in load_documents(text)] == ["default/rule1", "default/rule2"]
    listed = {"apiVersion": "v1", "kind": "List", "items": [cnp(), knp()]}
    assert [d.kind for d in load_documents(listed)] == ["CiliumNetworkPolicy", "NetworkPolicy"]


def test_specs_list_and_namespace_and_clusterwide() -> None:
    doc = cnp()
    doc["metadata"]["namespace"] = "empire"
    del doc["spec"]
    doc["specs"] = [{"endpointSelector": {}, "ingress": [{}]}, {"endpointSelector": {}, "egress": [{}]}]
    [loaded] = load_documents(doc)
    assert loaded.key == "empire/p"
    assert [s.path for s in loaded.specs] == ["specs[0]", "specs[1]"]
    assert [s.enforce for s in loaded.specs] == [{"ingress"}, {"egress"}]
    ccnp = cnp(ingress=[{"fromEntities": ["world"]}])
    ccnp["kind"] = "CiliumClusterwideNetworkPolicy"
    [loaded] = load_documents(ccnp)
    assert (loaded.namespace, loaded.key) == ("", "p")


def test_multi_document_all_or_nothing() -> None:
    bad_third = RULE1 + "---\n" + RULE1.replace("rule1", "rule2") + "---\n" + RULE1.replace(
        "rule1", "rule3").replace('port: "80"', 'port: "80000"')
    with pytest.raises(ValidationError) as err:
        load_documents(bad_third)
    message = str(err.value)
    assert message.startswith("policy document 3 (CiliumNetworkPolicy default/rule3): ")
    assert "spec.ingress[0].toPorts[0].ports[0].port: port 80000 is out of range 1-65535" in message or \
        "spec.ingress[0].toPorts[0].ports[0].port: port 80000 is out of range 0-65535" in message
    assert "\n" not in message


def mutate(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    keys = path.split(".")
    node = doc
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


_DELETE = object()

BAD_INPUTS: list[tuple[str, Any, str]] = [
    # (case id, document(s), expected message fragment: field path and why)
    ("malformed-yaml", "kind: CiliumNetworkPolicy\nmetadata: {name: x\n", "policy document 1: malformed YAML at line"),
    ("not-a-mapping", "- a\n- b\n", "policy document 1: must be a mapping"),
    ("unknown-kind", {**cnp(), "kind": "CiliumEgressGatewayPolicy"},
     "kind: unsupported kind 'CiliumEgressGatewayPolicy'"),
    ("missing-kind", mutate(cnp(), "kind", _DELETE), "kind: is required"),
    ("wrong-api-version", {**cnp(), "apiVersion": "cilium.io/v1"},
     "apiVersion: CiliumNetworkPolicy needs apiVersion cilium.io/v2"),
    ("missing-name", mutate(cnp(), "metadata.name", _DELETE), "(CiliumNetworkPolicy <unnamed>): metadata.name: is required"),
    ("missing-metadata", mutate(cnp(), "metadata", _DELETE), "metadata: is required"),
    ("bad-name", mutate(cnp(), "metadata.name", "Rule_1"), "metadata.name: 'Rule_1' is not a valid name"),
    ("unknown-top-field", {**cnp(), "sepc": {}}, "(CiliumNetworkPolicy default/p): sepc: unknown field"),
    ("no-spec", mutate(cnp(), "spec", _DELETE), "spec: CiliumNetworkPolicy needs spec or specs"),
    ("missing-endpoint-selector", mutate(cnp(), "spec.endpointSelector", _DELETE),
     "spec.endpointSelector: is required"),
    ("node-selector", cnp(nodeSelector={}), "spec.nodeSelector: host policies (nodeSelector) are not supported"),
    ("unknown-spec-field", cnp(ingres=[{}]), "spec.ingres: unknown field"),
    ("bad-operator", cnp(endpointSelector={"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}),
     "spec.endpointSelector.matchExpressions[0].operator: unknown operator 'Equals'"),
    ("in-without-values", cnp(endpointSelector={"matchExpressions": [{"key": "a", "operator": "In"}]}),
     "spec.endpointSelector.matchExpressions[0].values: operator In needs at least one value"),
    ("notin-empty-values", cnp(ingress=[{"fromEndpoints": [
        {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}]}]),
     "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values: operator NotIn needs at least one value"),
    ("exists-with-values", cnp(endpointSelector={"matchExpressions": [{"key": "a", "operator": "Exists",
                                                                       "values": ["x"]}]}),
     "spec.endpointSelector.matchExpressions[0].values: operator Exists takes no values"),
    ("unknown-selector-field", cnp(endpointSelector={"matchLabel": {"a": "b"}}),
     "spec.endpointSelector.matchLabel: unknown field"),
    ("unquoted-label-value", cnp(endpointSelector={"matchLabels": {"version": 2}}),
     "spec.endpointSelector.matchLabels.version: label value must be a string"),
    ("unknown-label-source", cnp(endpointSelector={"matchLabels": {"foo:app": "x"}}),
     "spec.endpointSelector.matchLabels.foo:app: unknown label source 'foo'"),
    ("invalid-cidr", cnp(ingress=[{"fromCIDR": ["10.0.0.300/8"]}]),
     "spec.ingress[0].fromCIDR[0]: '10.0.0.300/8' is not a valid CIDR"),
    ("cidr-host-bits", cnp(egress=[{"toCIDR": ["10.0.0.1/8"]}]),
     "spec.egress[0].toCIDR[0]: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?"),
    ("cidr-no-length", cnp(egress=[{"toCIDR": ["192.0.2.1"]}]), "spec.egress[0].toCIDR[0]: '192.0.2.1' is not a CIDR"),
    ("cidr-ipv6", cnp(egress=[{"toCIDR": ["::/0"]}]), "spec.egress[0].toCIDR[0]: IPv6 prefix '::/0' is not supported"),
    ("except-outside", cnp(egress=[{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}]}]),
     "spec.egress[0].toCIDRSet[0].except[0]: except 11.0.0.0/16 is not inside the CIDR 10.0.0.0/8"),
    ("except-equal", cnp(egress=[{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}]}]),
     "spec.egress[0].toCIDRSet[0].except[0]: except 10.0.0.0/8 is not inside the CIDR 10.0.0.0/8"),
    ("cidr-group", cnp(egress=[{"toCIDRSet": [{"cidrGroupRef": "x"}]}]),
     "spec.egress[0].toCIDRSet[0].cidrGroupRef: CiliumCIDRGroup references are not supported"),
    ("port-out-of-range", cnp(ingress=[port_rule(port="70000", protocol="TCP")]),
     "spec.ingress[0].toPorts[0].ports[0].port: port 70000 is out of range"),
    ("port-negative", cnp(ingress=[port_rule(port=-1)]), "spec.ingress[0].toPorts[0].ports[0].port: port -1 is out of range"),
    ("end-port-below", cnp(ingress=[port_rule(port="8080", endPort=8000)]),
     "spec.ingress[0].toPorts[0].ports[0].endPort: endPort 8000 is below port 8080"),
    ("end-port-out-of-range", cnp(ingress=[port_rule(port="8080", endPort=65536)]),
     "spec.ingress[0].toPorts[0].ports[0].endPort: port 65536 is out of range 1-65535"),
    ("end-port-without-port", cnp(ingress=[port_rule(endPort=90)]),
     "spec.ingress[0].toPorts[0].ports[0].endPort: endPort needs a non-zero port"),
    ("bad-protocol", cnp(ingress=[port_rule(port="53", protocol="QUIC")]),
     "spec.ingress[0].toPorts[0].ports[0].protocol: unsupported protocol 'QUIC' (use one of TCP, UDP, ANY)"),
    ("bad-port-name", cnp(ingress=[port_rule(port="Web_Port")]),
     "spec.ingress[0].toPorts[0].ports[0].port: 'Web_Port' is neither a port number nor a valid port name"),
    ("named-port-with-end-port", cnp(ingress=[port_rule(port="http", endPort=90)]),
     "spec.ingress[0].toPorts[0].ports[0].endPort: endPort needs a numeric port, not the named port 'http'"),
    ("l7-rules-without-protocol",
     cnp(ingress=[{"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [{"method": "GET"}]}}]}]),
     "spec.ingress[0].toPorts[0].ports[0].protocol: L7 (HTTP) rules need protocol TCP"),
    ("to-ports-without-ports", cnp(ingress=[{"toPorts": [{}]}]), "spec.ingress[0].toPorts[0].ports: needs at least one port"),
    ("unknown-entity", cnp(ingress=[{"fromEntities": ["kube-apiserver"]}]),
     "spec.ingress[0].fromEntities[0]: unsupported entity 'kube-apiserver'"),
    ("to-fqdns-with-endpoints", cnp(egress=[{"toFQDNs": [{"matchName": "example.com"}], "toEndpoints": [{}]}]),
     "spec.egress[0].toFQDNs: cannot be combined with toEndpoints in one rule"),
    ("to-fqdns-in-deny", cnp(egressDeny=[{"toFQDNs": [{"matchName": "example.com"}]}]),
     "spec.egressDeny[0].toFQDNs: toFQDNs is not allowed in deny rules"),
    ("from-requires", cnp(ingress=[{"fromRequires": [{}]}]), "spec.ingress[0].fromRequires: fromRequires is not supported"),
    ("icmps", cnp(ingress=[{"icmps": [{"fields": [{"type": 8}]}]}]), "spec.ingress[0].icmps: ICMP rules are not supported"),
    ("egress-field-in-ingress", cnp(ingress=[{"toEndpoints": [{}]}]),
     "spec.ingress[0].toEndpoints: toEndpoints belongs in egress rules"),
    ("deny-typo", cnp(ingressDeny=[{"fromEndpoint": [{}]}]), "spec.ingressDeny[0].fromEndpoint: unknown field"),
    ("specs-item", {**mutate(cnp(), "spec", _DELETE), "specs": [{"endpointSelector": {}},
                                                               {"endpointSelector": {}, "egress": [{"toPorts": [
                                                                   {"ports": [{"port": "99999"}]}]}]}]},
     "specs[1].egress[0].toPorts[0].ports[0].port: port 99999 is out of range"),
    ("empty-specs", {**mutate(cnp(), "spec", _DELETE), "specs": []}, "specs: must list at least one rule"),
    ("foreign-namespace-subject", cnp(endpointSelector={"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system"}}),
     "spec.endpointSelector: selects namespace kube-system but a namespaced policy only applies"),
    ("ccnp-namespace", {**cnp(), "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "c", "namespace": "x"}},
     "metadata.namespace: CiliumClusterwideNetworkPolicy is cluster-scoped"),
    ("bad-default-deny", cnp(enableDefaultDeny={"ingress": "yes"}), "spec.enableDefaultDeny.ingress: must be true or false"),
    ("rule-not-a-mapping", cnp(ingress=["fromEndpoints"]), "spec.ingress[0]: must be a mapping, got a string"),
    ("rules-not-a-list", cnp(ingress={"fromEndpoints": []}), "spec.ingress: must be a list, got a mapping"),
    ("selector-not-a-mapping", cnp(endpointSelector="class=deathstar"),
     "spec.endpointSelector: must be a mapping, got a string"),
    ("bad-label-key", cnp(endpointSelector={"matchLabels": {"bad key": "x"}}),
     "spec.endpointSelector.matchLabels.bad key: invalid label key 'bad key'"),
    # NetworkPolicy
    ("knp-missing-pod-selector", mutate(knp(), "spec.podSelector", _DELETE), "spec.podSelector: is required"),
    ("knp-bad-policy-type", knp(policyTypes=["Inbound"]), "spec.policyTypes[0]: unknown policy type 'Inbound'"),
    ("knp-rules-not-in-types", knp(policyTypes=["Ingress"], egress=[{}]),
     "spec.egress: has rules but policyTypes does not list Egress"),
    ("knp-empty-peer", knp(ingress=[{"from": [{}]}]),
     "spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock"),
    ("knp-ipblock-with-selector", knp(ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]),
     "spec.ingress[0].from[0].ipBlock: may not be combined"),
    ("knp-ipblock-except", knp(egress=[{"to": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.3.0/25"]}}]}]),
     "spec.egress[0].to[0].ipBlock.except[0]: except 192.0.3.0/25 is not inside the CIDR 192.0.2.0/24"),
    ("knp-port-zero", knp(ingress=[{"ports": [{"port": 0}]}]), "spec.ingress[0].ports[0].port: port 0 is out of range 1-65535"),
    ("knp-sctp", knp(ingress=[{"ports": [{"port": 80, "protocol": "SCTP"}]}]),
     "spec.ingress[0].ports[0].protocol: unsupported protocol 'SCTP' (use one of TCP, UDP)"),
    ("knp-port-name-too-long", knp(ingress=[{"ports": [{"port": "a-very-long-port-name"}]}]),
     "spec.ingress[0].ports[0].port: 'a-very-long-port-name' is neither a port number nor a valid port name"),
    ("knp-source-prefix", knp(podSelector={"matchLabels": {"k8s:app": "x"}}),
     "spec.podSelector.matchLabels.k8s:app: label key 'k8s:app' may not carry a source prefix here"),
    ("knp-specs", {**knp(), "specs": []}, "specs: NetworkPolicy has no specs; use spec"),
    ("knp-unknown-peer-field", knp(ingress=[{"from": [{"podSelectors": {}}]}]),
     "spec.ingress[0].from[0].podSelectors: unknown field"),
    ("duplicate-name", [cnp(), cnp()], "policy document 2 (CiliumNetworkPolicy default/p): metadata.name: "
                                       "CiliumNetworkPolicy default/p is also policy document 1"),
]


@pytest.mark.parametrize(("source", "expected"), [(s, e) for _, s, e in BAD_INPUTS],
                         ids=[case for case, _, _ in BAD_INPUTS])
def test_bad_input_names_document_field_and_reason(source: Any, expected: str) -> None:
    with pytest.raises(ValidationError) as err:
        load_documents(source)
    message = str(err.value)
    assert expected in message
    assert message.startswith(("policy document ",))
    assert "\n" not in message


def test_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(RULE1.replace("TCP", "TPC"))
    with pytest.raises(ValidationError, match=r"^bad.yaml policy document 1 \(CiliumNetworkPolicy default/rule1\): "
                                              r"spec.ingress\[0\].toPorts\[0\].ports\[0\].protocol: "):
        load_documents(path)


def test_descriptive_fields_are_accepted() -> None:
    doc = cnp(description="why", labels=[{"key": "a", "value": "b"}])
    doc["metadata"].update(labels={"team": "x"}, annotations={"a": "b"}, resourceVersion="1", uid="u")
    doc["status"] = {"conditions": []}
    assert load_documents(doc)[0].specs[0].enforce == frozenset()


def test_empty_documents_are_skipped_but_a_source_with_none_is_refused() -> None:
    with pytest.raises(ValidationError, match="no policy documents"):
        load_documents("---\n---\n")
    text = RULE1 + "---\n---\n" + RULE1.replace("rule1", "rule2")
    assert [d.index for d in load_documents(text)] == [1, 3]


def test_entities_and_default_deny_flags_load() -> None:
    [doc] = load_documents(cnp(enableDefaultDeny={"egress": True},
                               ingress=[{"fromEntities": ["health", "remote-node", "world-ipv4"]}]))
    [spec] = doc.specs
    assert spec.enforce == {"ingress", "egress"}
    [rule] = spec.rules
    assert rule.peers is not None and rule.peers.entities == ("health", "remote-node", "world-ipv4")
    assert rule.ports == ()


def test_ports_zero_means_any_port_in_cilium_policies() -> None:
    [doc] = load_documents(cnp(egress=[port_rule(port="0", protocol="UDP")]))
    [rule] = doc.specs[0].rules
    assert rule.peers is None and rule.ports == (PortRange(17, 0, 65535),)


POLICY_BOMB = ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bomb\n  annotations:\n"
               + "".join(f"    {chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}" if i else '"x"'] * 9)
                         + "]\n" for i in range(9))
               + "spec: {endpointSelector: {}, ingress: [{}]}\n")


@pytest.mark.parametrize("text, message", [
    (POLICY_BOMB, "excessive aliasing"),
    ("a: " + "[" * 100_000 + "]" * 100_000, "exceeded maximum nesting depth"),
    ("kind: x\0y", "binary data, not YAML"),
    ("", "no policy documents"),
    ("# only a comment\n---\n", "no policy documents"),
])
def test_hostile_policy_text_gets_one_line_and_no_documents(text, message):
    with pytest.raises(ValidationError, match=message) as err:
        load_documents(text, paths=False)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_binary_and_empty_policy_files_get_one_line(tmp_path):
    binary = tmp_path / "policy.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValidationError, match=r"^policy.yaml: binary data"):
        load_documents(binary)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ValidationError, match=r"^empty.yaml: no policy documents"):
        load_documents(empty)


def test_text_is_never_taken_for_a_path_when_paths_are_off(tmp_path):
    secret = tmp_path / "secret.yaml"
    secret.write_text("root:SECRET-HASH:0:0\n")
    with pytest.raises(ValidationError) as err:
        load_documents(str(secret), paths=False)
    assert "SECRET" not in str(err.value)
