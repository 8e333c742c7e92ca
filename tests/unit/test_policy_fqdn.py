"""DNS names in policy: FqdnSelector's matching (Cilium's matchName / matchPattern), validation and parsing.

The matching table follows Cilium's documentation and matchpattern test cases
(names written with or without the trailing dot); a hypothesis test compares
``FqdnSelector.matches`` with a label-by-label reference written here.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.errors import ValidationError
from workbench.policy import load_documents
from workbench.policy.fqdn import (
    ALLOW_ALL_NAMES,
    FqdnSelector,
    fqdn_identity_labels,
    fqdn_identity_prefix,
    is_fqdn_identity,
    names_allowed,
)

# pattern -> (names it matches, names it does not)
PATTERN_TABLE: list[tuple[str, list[str], list[str]]] = [
    ("cilium.io", ["cilium.io", "cilium.io.", "CILIUM.io"],
     ["anysub.cilium.io", "anysub.ci.io", "anysub.ciliumandmore.io", "cilium.io.x"]),
    ("*.cilium.io", ["anysub.cilium.io", "anysub.cilium.io.", "_srv.cilium.io"],
     ["cilium.io", "anysub.ci.io", "anysub.ciliumandmore.io", "a.b.cilium.io", ".cilium.io"]),
    ("*.ci*.io", ["anysub.cilium.io", "anysub.ci.io", "anysub.ciliumandmore.io"],
     ["ci.io", "cilium.io", "service.namespace.svc.cluster.local"]),
    ("part*ial.com", ["partial.com", "part-extra-ial.com"], ["part.ial.com", "partia.com"]),
    ("*", [".", "io", "cilium.io", "svc.cluster.local", "_foobar._tcp.cilium.io"],
     ["", ".io.", "..cilium.io", "cilium..io", "bad!name.io"]),
    ("_foobar._tcp.cilium.io", ["_foobar._tcp.cilium.io"], ["_tcp.cilium.io", "cilium.io"]),
    ("*.*.cilium.io", ["_foobar._tcp.cilium.io"], ["x.cilium.io", "a.b.c.cilium.io"]),
    ("**.cilium.io", ["anysub.cilium.io", "_foobar._tcp.cilium.io", "sub11.sub22.sub33._foobar._tcp.cilium.io"],
     ["cilium.io", "anysub.ci.io", "anysub.ciliumandmore.io", "1._foobar_tcp.cilium.trio"]),
    ("**.ci*.io", ["anysub.cilium.io", "anysub.ci.io", "1.anysub.ciliumandmore.io"],
     ["cilium.io", "service.namespace.svc..ciblaster.io"]),
    ("**.*.io", ["anysub.cilium.io", "service.namespace.svc.ciuster.io"], ["io", "cilium.io"]),
    ("*.*.svc.cluster.local", ["service.namespace.svc.cluster.local"], ["namespace.svc.cluster.local"]),
]


@pytest.mark.parametrize(("pattern", "accept", "reject"), PATTERN_TABLE, ids=[p for p, _, _ in PATTERN_TABLE])
def test_match_pattern_table(pattern: str, accept: list[str], reject: list[str]) -> None:
    selector = FqdnSelector(match_pattern=pattern)
    assert [n for n in accept if not selector.matches(n)] == []
    assert [n for n in reject if selector.matches(n)] == []


def test_brief_examples_and_match_name() -> None:
    star = FqdnSelector(match_pattern="*.github.com")
    assert star.matches("api.github.com") and not star.matches("github.com") and not star.matches("a.b.github.com")
    name = FqdnSelector(match_name="API.GitHub.com.")
    assert name.match_name == "api.github.com"
    assert name.matches("api.github.com.") and name.matches("Api.Github.Com") and not name.matches("x.api.github.com")
    assert ALLOW_ALL_NAMES.matches("anything.example") and ALLOW_ALL_NAMES.matches(".")


@pytest.mark.parametrize(("pattern", "normalized"), [("*", "*"), ("**", "*"), ("**.", "*"), ("*.", "*"),
                                                     ("*.COM.", "*.com"), ("**.Example.com", "**.example.com")])
def test_patterns_are_normalized(pattern: str, normalized: str) -> None:
    assert FqdnSelector(match_pattern=pattern).match_pattern == normalized


def test_labels_and_text() -> None:
    assert FqdnSelector(match_name="api.github.com").label == "fqdn:api.github.com"
    assert FqdnSelector(match_pattern="*.github.com").label == "fqdn:*.github.com"
    assert str(FqdnSelector(match_pattern="*.github.com")) == "matchPattern=*.github.com"
    assert FqdnSelector(match_name="a.io").to_dict() == {"matchName": "a.io"}
    labels = fqdn_identity_labels("192.0.2.10", [FqdnSelector(match_pattern="*.github.com"),
                                                 FqdnSelector(match_name="api.github.com")])
    assert labels == ("cidr:192.0.2.10/32", "fqdn:*.github.com", "fqdn:api.github.com", "reserved:world")
    assert is_fqdn_identity(labels) and fqdn_identity_prefix(labels) == "192.0.2.10/32"
    assert not is_fqdn_identity(("cidr:192.0.2.0/24", "reserved:world"))
    assert fqdn_identity_prefix(("cidr:192.0.2.0/24", "reserved:world")) is None
    with pytest.raises(ValueError):
        fqdn_identity_labels("not-an-ip", [])


def test_names_allowed_is_a_union() -> None:
    rules = (FqdnSelector(match_name="a.example"), FqdnSelector(match_pattern="*.b.example"))
    assert names_allowed(rules, "a.example") and names_allowed(rules, "x.b.example")
    assert not names_allowed(rules, "b.example") and not names_allowed((), "a.example")


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({}, "exactly one of matchName and matchPattern"),
    ({"match_name": "a.io", "match_pattern": "*.io"}, "exactly one"),
    ({"match_name": "a b.io"}, "is not a DNS name"),
    ({"match_name": "*.io"}, "is not a DNS name"),
    ({"match_name": "a..io"}, "empty label"),
    ({"match_name": "x" * 256}, "longer than 255"),
    ({"match_pattern": "a.**.io"}, "'**' is a wildcard only as the leading '**.'"),
    ({"match_pattern": "**cilium.io"}, "'**' is a wildcard only"),
    ({"match_pattern": "[a].io"}, "is not a DNS pattern"),
    ({"match_pattern": ".*.io"}, "empty label"),
])
def test_invalid_selectors_are_refused(kwargs: dict[str, str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("*", r"\*").replace("(", r"\(")):
        FqdnSelector(**kwargs)


# ---- reference: label by label, written without regular expressions ---------------------------------

DNS_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def _label_matches(pattern: str, label: str) -> bool:
    """``*`` in a pattern label: any run of DNS characters (also none); everything else literally."""
    if not pattern:
        return not label
    if pattern[0] == "*":
        return any(_label_matches(pattern[1:], label[i:]) for i in range(len(label) + 1))
    return bool(label) and label[0] == pattern[0] and _label_matches(pattern[1:], label[1:])


def reference_matches(selector: FqdnSelector, name: str) -> bool:
    name = name.strip().lower()
    if name == ".":
        return selector.match_pattern == "*"
    name = name[:-1] if name.endswith(".") else name
    labels = name.split(".")
    if not name or any(not label or set(label) - DNS_CHARS for label in labels):
        return False
    if selector.match_name:
        return labels == selector.match_name.split(".")
    if selector.match_pattern == "*":
        return True
    want = selector.match_pattern.split(".")
    if want[0] == "**":                       # one or more whole labels, then the rest label by label
        rest = want[1:]
        return len(labels) > len(rest) and all(map(_label_matches, rest, labels[len(labels) - len(rest):]))
    return len(want) == len(labels) and all(map(_label_matches, want, labels))


LABELS = st.sampled_from(["a", "b", "io", "api", "git-hub", "_tcp", "x1", "", "A", "b!"])
PATTERN_LABELS = st.sampled_from(["a", "b", "io", "api", "*", "a*", "*b", "g*b", "*i*", "_tcp", "**"])


@st.composite
def names(draw: Any) -> str:
    name = ".".join(draw(st.lists(LABELS, min_size=1, max_size=4)))
    return name + draw(st.sampled_from(["", "."]))


@st.composite
def selectors(draw: Any) -> FqdnSelector:
    if draw(st.booleans()):
        labels = draw(st.lists(LABELS.filter(lambda x: x and "!" not in x), min_size=1, max_size=3))
        return FqdnSelector(match_name=".".join(labels))
    parts = draw(st.lists(PATTERN_LABELS, min_size=1, max_size=4))
    pattern = ".".join(parts)
    try:
        return FqdnSelector(match_pattern=pattern)
    except ValueError:
        return FqdnSelector(match_pattern=".".join(p.replace("**", "*") for p in parts))


@settings(max_examples=600, deadline=None)
@given(selectors(), names())
def test_matches_agrees_with_label_by_label_reference(selector: FqdnSelector, name: str) -> None:
    assert selector.matches(name) == reference_matches(selector, name)


def test_reference_is_not_trivially_false() -> None:
    # the hypothesis test is only worth something if both answers occur
    assert reference_matches(FqdnSelector(match_pattern="**.io"), "a.b.io")
    assert not reference_matches(FqdnSelector(match_pattern="*.io"), "a.b.io")


# ---- parsing: rules.dns and toFQDNs in documents -----------------------------------------------------

def cnp(body: str) -> str:
    return ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: dns\nspec:\n"
            "  endpointSelector: {matchLabels: {class: xwing}}\n"
            + textwrap.indent(textwrap.dedent(body).strip(), "  ") + "\n")


DNS_AND_FQDN = cnp("""
    egress:
    - toEndpoints: [{matchLabels: {k8s-app: kube-dns}}]
      toPorts:
      - ports: [{port: "53", protocol: ANY}]
        rules:
          dns: [{matchName: api.github.com}, {matchPattern: "*.github.com"}]
    - toFQDNs: [{matchName: API.github.com.}, {matchPattern: "*.github.com"}]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
    - toFQDNs: [{matchPattern: "**.example.com"}]
    """)


def test_dns_rules_and_to_fqdns_parse() -> None:
    [doc] = load_documents(DNS_AND_FQDN)
    dns_rule, fqdn_rule, alone = doc.specs[0].rules
    assert dns_rule.dns == (FqdnSelector(match_name="api.github.com"), FqdnSelector(match_pattern="*.github.com"))
    assert dns_rule.http is None and {(p.protocol, p.first) for p in dns_rule.ports} == {(6, 53), (17, 53)}
    assert fqdn_rule.peers is not None and fqdn_rule.peers.fqdns == (
        FqdnSelector(match_name="api.github.com"), FqdnSelector(match_pattern="*.github.com"))
    assert fqdn_rule.dns is None and [(p.protocol, p.first) for p in fqdn_rule.ports] == [(6, 443)]
    assert alone.peers is not None and alone.peers.fqdns == (FqdnSelector(match_pattern="**.example.com"),)
    assert alone.ports == ()
    hash(fqdn_rule.peers)   # Peers stay hashable (the compiler caches resolutions by them)
    assert "fqdn(matchName=api.github.com)" in str(fqdn_rule)
    assert "dns(matchPattern=*.github.com)" in str(dns_rule)


BAD = [
    ("ingress:\n- toPorts: [{ports: [{port: '53', protocol: UDP}], rules: {dns: [{matchName: a.io}]}}]",
     "spec.ingress[0].toPorts[0].rules.dns: DNS rules are only allowed in egress rules"),
    ("egressDeny:\n- toPorts: [{ports: [{port: '53', protocol: UDP}], rules: {dns: [{matchName: a.io}]}}]",
     "spec.egressDeny[0].toPorts[0].rules: L7 rules are not allowed in deny policies"),
    ("egress:\n- toPorts: [{ports: [{port: '53'}], rules: {dns: []}}]",
     "spec.egress[0].toPorts[0].rules.dns: an empty dns list names no rule"),
    ("egress:\n- toPorts: [{ports: [{port: '53'}], rules: {dns: [{}]}}]",
     "spec.egress[0].toPorts[0].rules.dns[0]: needs matchName or matchPattern"),
    ("egress:\n- toPorts: [{ports: [{port: '53'}], rules: {dns: [{matchName: a.io, matchPattern: '*'}]}}]",
     "spec.egress[0].toPorts[0].rules.dns[0]: has both matchName and matchPattern"),
    ("egress:\n- toPorts: [{ports: [{port: '53'}], rules: {dns: [{matchName: 'a b'}]}}]",
     "spec.egress[0].toPorts[0].rules.dns[0].matchName: 'a b' is not a DNS name"),
    ("egress:\n- toPorts: [{ports: [{port: '53'}], rules: {dns: [{matchPattern: 'a.**.io'}]}}]",
     "spec.egress[0].toPorts[0].rules.dns[0].matchPattern: 'a.**.io': '**' is a wildcard only"),
    ("egress:\n- toPorts: [{ports: [{port: '53'}], rules: {dns: [{matchRegex: x}]}}]",
     "spec.egress[0].toPorts[0].rules.dns[0].matchRegex: unknown field"),
    ("egress:\n- toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {dns: [{matchName: a.io}],"
     " http: [{}]}}]", "spec.egress[0].toPorts[0].rules: has both http and dns rules"),
    ("egress:\n- toPorts: [{ports: [{port: '0'}], rules: {dns: [{matchName: a.io}]}}]",
     "spec.egress[0].toPorts[0].ports[0].port: DNS rules need the DNS server's port"),
    ("egress:\n- toPorts: [{ports: [{port: '53', endPort: 54}], rules: {dns: [{matchName: a.io}]}}]",
     "spec.egress[0].toPorts[0].ports[0].endPort: DNS rules need a single port"),
    ("egress:\n- toFQDNs: [{matchName: a.io}]\n  toCIDR: [192.0.2.0/24]",
     "spec.egress[0].toFQDNs: cannot be combined with toCIDR in one rule"),
    ("egress:\n- toFQDNs: [{matchName: a.io}]\n  toEntities: [world]",
     "spec.egress[0].toFQDNs: cannot be combined with toEntities"),
    ("egressDeny:\n- toFQDNs: [{matchName: a.io}]", "spec.egressDeny[0].toFQDNs: toFQDNs is not allowed in deny"),
    ("ingress:\n- toFQDNs: [{matchName: a.io}]", "spec.ingress[0].toFQDNs: toFQDNs belongs in egress rules"),
    ("egress:\n- toFQDNs: [{matchPattern: ''}]", "spec.egress[0].toFQDNs[0]: needs matchName or matchPattern"),
    ("egress:\n- toFQDNs: [{matchPattern: 'a..io'}]", "spec.egress[0].toFQDNs[0].matchPattern: 'a..io' has an "
     "empty label"),
    ("egress:\n- toFQDNs: [a.io]", "spec.egress[0].toFQDNs[0]: must be a mapping, got a string"),
    ("egress:\n- toPorts: [{ports: [{port: '53'}], rules: {kafka: [{topic: x}]}}]",
     "spec.egress[0].toPorts[0].rules.kafka: Kafka L7 rules are not supported (HTTP and DNS only)"),
]


@pytest.mark.parametrize(("body", "expected"), BAD, ids=[e.split(":")[0] + str(i) for i, (_, e) in enumerate(BAD)])
def test_refusals_name_the_field(body: str, expected: str) -> None:
    with pytest.raises(ValidationError) as err:
        load_documents(cnp(body))
    message = str(err.value)
    assert "\n" not in message.split(" (hint", 1)[0]
    assert f"(CiliumNetworkPolicy default/dns): {expected}" in message
