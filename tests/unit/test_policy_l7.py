"""L7 (HTTP) rules: parsing, validation at apply, anchoring, and what the compiler emits for the proxy."""

from __future__ import annotations

import textwrap

import pytest

from workbench.errors import ValidationError
from workbench.lab.identity import IdentityAllocator, identity_labels
from workbench.lab.model import Endpoint
from workbench.policy import compile_policies, explain, load_documents
from workbench.policy.compiler import DEFAULT_PROXY_PORT
from workbench.policy.l7 import ALLOW_ALL, HttpRule, request_allowed

NAMESPACES = {"default": {"kubernetes.io/metadata.name": "default"}}
PODS = [(1, "deathstar", {"org": "empire", "class": "deathstar"}),
        (2, "tiefighter", {"org": "empire", "class": "tiefighter"}),
        (3, "xwing", {"org": "alliance", "class": "xwing"})]


def lab() -> tuple[list[Endpoint], IdentityAllocator]:
    alloc = IdentityAllocator()
    eps = []
    for ep_id, pod, labels in PODS:
        ident = alloc.allocate(identity_labels(labels, "default", NAMESPACES["default"]))
        eps.append(Endpoint(ep_id, pod, "default", f"10.200.0.{ep_id}", ident.id, ident.labels, labels,
                            f"wb-t-{pod}", f"lxc{ep_id}"))
    return eps, alloc


def cnp(body: str, name: str = "l7") -> str:
    return (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n"
            + textwrap.indent(textwrap.dedent(body).strip(), "  ") + "\n")


RULE1_L7 = cnp("""
    endpointSelector: {matchLabels: {org: empire, class: deathstar}}
    ingress:
    - fromEndpoints: [{matchLabels: {org: empire}}]
      toPorts:
      - ports: [{port: "80", protocol: TCP}]
        rules:
          http: [{method: POST, path: /v1/request-landing}]
    """)


def compile_text(text: str):  # type: ignore[no-untyped-def]
    eps, alloc = lab()
    return compile_policies(load_documents(text), eps, list(alloc.all()), NAMESPACES), eps


def test_seed_l7_rule_marks_the_entry_with_the_proxy_port():
    compiled, eps = compile_text(RULE1_L7)
    deathstar, tiefighter, xwing = eps
    # org=empire: the deathstar's own identity and tiefighter's
    assert {e.identity for e in compiled.entries} == {deathstar.identity, tiefighter.identity}
    [entry] = [e for e in compiled.entries if e.identity == tiefighter.identity]
    assert (entry.ep_id, entry.direction, entry.identity, entry.protocol, entry.port, entry.port_prefix) == \
        (1, "ingress", tiefighter.identity, 6, 80, 16)
    assert entry.proxy_port == DEFAULT_PROXY_PORT
    rules = compiled.http_rules(1, "ingress", tiefighter.identity, 80)
    assert rules == (HttpRule(method="POST", path="/v1/request-landing"),)
    assert request_allowed(rules, "POST", "/v1/request-landing", {})
    assert not request_allowed(rules, "PUT", "/v1/exhaust-port", {})
    # xwing has no entry at all: L3/L4 drops it before any proxy
    assert compiled.http_rules(1, "ingress", xwing.identity, 80) is None
    assert compiled.http_rules(1, "ingress", tiefighter.identity, 81) is None


def test_regexes_are_anchored_full_match():
    rule = HttpRule(method="GET", path="/v1/")
    assert rule.matches("GET", "/v1/", {})
    assert not rule.matches("GET", "/v1/x", {})
    assert not rule.matches("GET", "/x/v1/", {})
    assert not rule.matches("GETX", "/v1/", {})
    assert HttpRule(path="/v1/.*").matches("DELETE", "/v1/x?y=1", {})
    assert HttpRule(method="GET|HEAD").matches("HEAD", "/", {})


def test_headers_presence_and_value():
    rule = HttpRule(headers=(("X-Has-Force", "True"), ("X-Trace", None)))
    assert rule.matches("GET", "/", {"x-has-force": "True", "x-trace": ""})
    assert not rule.matches("GET", "/", {"x-has-force": "False", "x-trace": "1"})
    assert not rule.matches("GET", "/", {"x-has-force": "True"})


def test_header_and_host_rules_parse():
    compiled, eps = compile_text(cnp("""
        endpointSelector: {matchLabels: {class: deathstar}}
        ingress:
        - toPorts:
          - ports: [{port: "80", protocol: TCP}]
            rules:
              http:
              - {method: GET, path: "/v1/.*", headers: ["X-Has-Force: True", X-Trace], host: "deathstar.*"}
        """))
    rules = compiled.http_rules(1, "ingress", eps[2].identity, 80)
    assert rules == (HttpRule("GET", "/v1/.*", "deathstar.*", (("X-Has-Force", "True"), ("X-Trace", None))),)


def test_empty_http_list_allows_every_request_but_still_redirects():
    compiled, eps = compile_text(cnp("""
        endpointSelector: {matchLabels: {class: deathstar}}
        ingress:
        - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: []}}]
        """))
    [entry] = compiled.entries
    assert entry.identity == 0 and entry.proxy_port == DEFAULT_PROXY_PORT
    assert compiled.http_rules(1, "ingress", eps[2].identity, 80) == (ALLOW_ALL,)


def test_l3l4_allow_for_the_same_peer_wildcards_l7():
    compiled, eps = compile_text(RULE1_L7 + "---\n" + cnp("""
        endpointSelector: {matchLabels: {class: deathstar}}
        ingress:
        - fromEndpoints: [{matchLabels: {class: tiefighter}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """, name="plain"))
    assert compiled.http_rules(1, "ingress", eps[1].identity, 80) == (
        HttpRule(method="POST", path="/v1/request-landing"), ALLOW_ALL)
    assert compiled.entries[0].proxy_port == DEFAULT_PROXY_PORT


def test_l3_only_allow_for_the_peer_means_no_l7_restriction():
    compiled, eps = compile_text(RULE1_L7 + "---\n" + cnp("""
        endpointSelector: {matchLabels: {class: deathstar}}
        ingress: [{fromEndpoints: [{matchLabels: {class: tiefighter}}]}]
        """, name="l3"))
    assert compiled.http_rules(1, "ingress", eps[1].identity, 80) is None


def test_plain_ports_and_l7_ports_in_one_rule_stay_apart():
    compiled, eps = compile_text(cnp("""
        endpointSelector: {matchLabels: {class: deathstar}}
        ingress:
        - fromEndpoints: [{matchLabels: {org: empire}}]
          toPorts:
          - ports: [{port: "8080", protocol: TCP}]
          - ports: [{port: "80", protocol: TCP}]
            rules: {http: [{method: GET}]}
        """))
    by_port = {e.port: e.proxy_port for e in compiled.entries}
    assert by_port == {80: DEFAULT_PROXY_PORT, 8080: 0}
    assert compiled.http_rules(1, "ingress", eps[1].identity, 8080) is None


@pytest.mark.parametrize("body, message", [
    ("""
     - toPorts:
       - ports: [{port: "80"}]
         rules: {http: [{method: GET}]}
     """, "ingress[0].toPorts[0].ports[0].protocol: L7 (HTTP) rules need protocol TCP; this port has no protocol"),
    ("""
     - toPorts:
       - ports: [{port: "53", protocol: UDP}]
         rules: {http: [{method: GET}]}
     """, "this port has protocol UDP"),
    ("""
     - toPorts:
       - ports: [{port: "80", protocol: ANY}]
         rules: {http: [{method: GET}]}
     """, "this port has protocol ANY"),
    ("""
     - toPorts:
       - ports: [{port: "80", protocol: TCP}]
         rules: {http: [{path: "/v1/(unclosed"}]}
     """, "ingress[0].toPorts[0].rules.http[0].path: invalid regular expression '/v1/(unclosed'"),
    ("""
     - toPorts:
       - ports: [{port: "80", protocol: TCP}]
         rules: {http: [{method: "*"}]}
     """, "http[0].method: invalid regular expression"),
    ("""
     - toPorts:
       - ports: [{port: "80", protocol: TCP}]
         rules: {http: [{verb: GET}]}
     """, "http[0].verb: unknown field"),
    ("""
     - toPorts:
       - ports: [{port: "80", protocol: TCP}]
         rules: {http: [{path: "/v1/(?!exhaust).*"}]}
     """, "http[0].path: invalid regular expression '/v1/(?!exhaust).*' (RE2 syntax): invalid perl operator"),
    ("""
     - toPorts:
       - ports: [{port: "80", protocol: TCP}]
         rules: {http: [{host: "(a)\\\\1"}]}
     """, "http[0].host: invalid regular expression"),
    ("""
     - toPorts:
       - ports: [{port: "80", protocol: TCP}]
         rules: {kafka: [{topic: x}]}
     """, "rules.kafka: Kafka L7 rules are not supported"),
    ("""
     - toPorts:
       - ports: [{port: "80", protocol: TCP}]
         rules: {http: [{headers: ["bad header: x"]}]}
     """, "is not a valid HTTP header name"),
])
def test_bad_l7_rules_are_refused_with_the_field_path(body, message):
    text = cnp("endpointSelector: {matchLabels: {class: deathstar}}\ningress:\n"
               + textwrap.indent(textwrap.dedent(body).strip(), ""))
    with pytest.raises(ValidationError) as err:
        load_documents(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_l7_rules_in_deny_sections_are_refused():
    text = cnp("""
        endpointSelector: {matchLabels: {class: deathstar}}
        ingressDeny:
        - toPorts:
          - ports: [{port: "80", protocol: TCP}]
            rules: {http: [{method: PUT}]}
        """)
    with pytest.raises(ValidationError, match="ingressDeny\\[0\\].toPorts\\[0\\].rules: L7 rules are not allowed in deny"):
        load_documents(text)


def test_a_bad_document_in_a_batch_applies_nothing():
    bad = cnp("""
        endpointSelector: {}
        ingress:
        - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{path: "["}]}}]
        """, name="bad")
    with pytest.raises(ValidationError, match="policy document 2"):
        load_documents(RULE1_L7 + "---\n" + bad)


def test_deny_covering_an_l7_allow_removes_the_redirect():
    compiled, eps = compile_text(RULE1_L7 + "---\n" + cnp("""
        endpointSelector: {matchLabels: {class: deathstar}}
        ingressDeny: [{fromEndpoints: [{matchLabels: {class: tiefighter}}]}]
        """, name="deny"))
    assert all(e.proxy_port == 0 for e in compiled.entries if e.deny)
    assert not [e for e in compiled.entries if not e.deny and e.identity == eps[1].identity]


def test_explain_shows_the_http_rules_of_redirected_entries():
    compiled, eps = compile_text(RULE1_L7)
    rows = explain(compiled, pod="deathstar")
    assert {tuple(r["http"]) for r in rows} == {("http(method=POST, path=/v1/request-landing)",)}


def test_catastrophic_backtracking_patterns_match_in_linear_time():
    """Python's re took 13 s for this pattern on 27 a's; RE2 has no backtracking.

    All six matches take 10-30 ms here; the bound only tells linear from
    exponential (100 000 a's would never finish), with room for a slow machine.
    """
    import time

    rule = HttpRule(path="/v1/(a+)+")
    started = time.perf_counter()
    for n in (27, 1000, 100_000):
        assert not rule.matches("GET", "/v1/" + "a" * n + "!", {})
        assert rule.matches("GET", "/v1/" + "a" * n, {})
    assert time.perf_counter() - started < 5.0
