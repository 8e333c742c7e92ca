"""toFQDNs and rules.dns through the compiler, and through explain, rules, trace, replay and suggest.

Pure: a small lab (xwing asks kube-dns, then connects to what it learned),
fqdn identities given to the compile as the agent allocates them.
"""

from __future__ import annotations

import textwrap

import pytest

from workbench.errors import ValidationError
from workbench.lab.identity import IdentityAllocator, identity_labels
from workbench.lab.model import ID_WORLD, Endpoint, Identity
from workbench.policy import compile_policies, explain, load_documents
from workbench.policy.cidr import LOCAL_IDENTITY_SCOPE
from workbench.policy.compiler import DEFAULT_DNS_PROXY_PORT, DEFAULT_PROXY_PORT, CompiledPolicy, entry_key
from workbench.policy.fqdn import ALLOW_ALL_NAMES, FqdnSelector, fqdn_identity_labels, names_allowed
from workbench.policy.replay import replay
from workbench.policy.rules_view import rule_rows
from workbench.policy.suggest import suggest_policies
from workbench.policy.trace import Party, format_trace, resolve_ends, trace, trace_connection

NAMESPACES = {"default": {"kubernetes.io/metadata.name": "default"},
              "kube-system": {"kubernetes.io/metadata.name": "kube-system"}}
PODS = [(1, "xwing", "default", {"class": "xwing"}),
        (2, "deathstar", "default", {"class": "deathstar"}),
        (3, "coredns", "kube-system", {"k8s-app": "kube-dns"})]
ALLOC = IdentityAllocator()
ENDPOINTS = []
for _id, _pod, _ns, _labels in PODS:
    _ident = ALLOC.allocate(identity_labels(_labels, _ns, NAMESPACES[_ns]))
    ENDPOINTS.append(Endpoint(_id, _pod, _ns, f"10.200.0.{_id}", _ident.id, _ident.labels, _labels,
                              f"wb-t-{_pod}", f"lxc{_id}"))
XWING, DEATHSTAR, COREDNS = ENDPOINTS
API = FqdnSelector(match_name="api.github.com")
ANY_GITHUB = FqdnSelector(match_pattern="*.github.com")
# as the agent allocates them: one identity per learned address, labelled with the selectors that matched
GITHUB_IP, OTHER_IP = "192.0.2.10", "198.51.100.7"
GITHUB_ID = Identity(LOCAL_IDENTITY_SCOPE | 100, fqdn_identity_labels(GITHUB_IP, [API, ANY_GITHUB]))
OTHER_ID = Identity(LOCAL_IDENTITY_SCOPE | 101, fqdn_identity_labels(OTHER_IP, [FqdnSelector(match_name="x.io")]))


def cnp(body: str, name: str = "dns") -> str:
    return (f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n"
            "  endpointSelector: {matchLabels: {class: xwing}}\n"
            + textwrap.indent(textwrap.dedent(body).strip(), "  ") + "\n---\n")


DNS_RULE = """
    - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
      toPorts:
      - ports: [{port: "53", protocol: ANY}]
        rules:
          dns: [{matchName: api.github.com}, {matchPattern: "*.github.com"}]
"""
FQDN_RULE = """
    - toFQDNs: [{matchName: api.github.com}]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"""


def compile_text(text: str, fqdn: list[Identity] | None = None, **kwargs: int) -> CompiledPolicy:
    identities = list(ALLOC.all()) + (fqdn if fqdn is not None else [GITHUB_ID, OTHER_ID])
    return compile_policies(load_documents(text), ENDPOINTS, identities, NAMESPACES, **kwargs)  # type: ignore[arg-type]


def keys(compiled: CompiledPolicy, ep: Endpoint = XWING) -> set[tuple[int, int, int, int, int]]:
    return {(e.identity, e.protocol, e.port, e.port_prefix, e.proxy_port)
            for e in compiled.entries if e.ep_id == ep.id and e.direction == "egress" and not e.deny}


def test_dns_rule_redirects_udp_and_tcp_53_to_the_dns_proxy() -> None:
    compiled = compile_text(cnp("egress:" + DNS_RULE))
    assert keys(compiled) == {(COREDNS.identity, 17, 53, 16, DEFAULT_DNS_PROXY_PORT),
                              (COREDNS.identity, 6, 53, 16, DEFAULT_DNS_PROXY_PORT)}
    for protocol in (17, 6):
        rules = compiled.dns_rules(XWING.id, "egress", COREDNS.identity, protocol, 53)
        assert rules == (API, ANY_GITHUB)
        assert rules is not None and names_allowed(rules, "www.github.com") and not names_allowed(rules, "x.io")
    assert compiled.dns_rules(XWING.id, "egress", COREDNS.identity, 17, 54) is None
    assert compiled.dns_rules(XWING.id, "egress", DEATHSTAR.identity, 17, 53) is None
    assert compiled.dns_rules(XWING.id, "ingress", COREDNS.identity, 17, 53) is None
    assert compiled.http_rules(XWING.id, "egress", COREDNS.identity, 53) is None
    assert (XWING.id, "egress") in compiled.enforced
    custom = compile_text(cnp("egress:" + DNS_RULE), dns_proxy_port=15053)
    assert {k[4] for k in keys(custom)} == {15053}


def test_an_l3_l4_allow_of_the_same_query_adds_every_name() -> None:
    same_key = cnp("egress:" + DNS_RULE) + cnp("""
        egress:
        - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system}}]
          toPorts: [{ports: [{port: "53", protocol: UDP}]}]
        """, name="plain")
    compiled = compile_text(same_key)
    assert compiled.dns_rules(XWING.id, "egress", COREDNS.identity, 17, 53) == (API, ANY_GITHUB, ALLOW_ALL_NAMES)
    assert compiled.dns_rules(XWING.id, "egress", COREDNS.identity, 6, 53) == (API, ANY_GITHUB)
    # an L3-only allow (another key, any port) covers the query too: Cilium's wildcard
    l3_only = compile_text(cnp("egress:" + DNS_RULE) + cnp("egress:\n- toEntities: [cluster]\n", name="l3"))
    rules = l3_only.dns_rules(XWING.id, "egress", COREDNS.identity, 6, 53)
    assert rules is not None and ALLOW_ALL_NAMES in rules and names_allowed(rules, "anything.example")


def test_http_and_dns_rules_on_one_key_are_refused() -> None:
    http = cnp("""
        egress:
        - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}}]
          toPorts: [{ports: [{port: "53", protocol: TCP}], rules: {http: [{}]}}]
        """, name="http")
    with pytest.raises(ValidationError, match=r"\(CiliumNetworkPolicy default/dns\): spec.egress\[0\]: DNS rules "
                                              r"for a peer and port that default/http spec.egress\[0\] gives HTTP"):
        compile_text(http + cnp("egress:" + DNS_RULE))


def test_to_fqdns_selects_the_identities_learned_for_its_names() -> None:
    compiled = compile_text(cnp("egress:" + DNS_RULE + FQDN_RULE))
    assert (GITHUB_ID.id, 6, 443, 16, 0) in keys(compiled)
    assert not any(e.identity == OTHER_ID.id for e in compiled.entries)
    assert compiled.identity_labels[GITHUB_ID.id] == GITHUB_ID.labels
    assert compiled.cidr_identities[f"{GITHUB_IP}/32"] == GITHUB_ID.id   # the ipcache resolves the address to it
    assert compiled.fqdn_selectors == (API,)
    assert compiled.notes == {}
    pattern = compile_text(cnp("egress:\n- toFQDNs: [{matchPattern: '*.github.com'}, {matchName: x.io}]\n"))
    assert {e.identity for e in pattern.entries} == {GITHUB_ID.id, OTHER_ID.id}
    assert {(e.protocol, e.port_prefix) for e in pattern.entries} == {(0, 0)}
    assert pattern.fqdn_selectors == (ANY_GITHUB, FqdnSelector(match_name="x.io"))


def test_to_fqdns_with_nothing_learned_is_enforced_without_entries() -> None:
    compiled = compile_text(cnp("egress:" + FQDN_RULE), fqdn=[])
    assert (XWING.id, "egress") in compiled.enforced and keys(compiled) == set()
    [note] = compiled.notes[(XWING.id, "egress")]
    assert "default/dns spec.egress[0]: toFQDNs (matchName=api.github.com)" in note
    assert "no egress rule with rules.dns selects this pod, so it learns nothing" in note
    [row] = explain(compiled, pod="xwing")
    assert row["verdict"] == "default-deny" and row["note"] == note
    with_dns = compile_text(cnp("egress:" + DNS_RULE + FQDN_RULE), fqdn=[])
    [waiting] = with_dns.notes[(XWING.id, "egress")]
    assert "selects no address yet" in waiting
    rows = explain(with_dns, pod="xwing")
    assert rows[0]["note"] == waiting and all(r["note"] == "" for r in rows[1:])
    assert rows[0]["dns"] == ["dns(matchName=api.github.com)", "dns(matchPattern=*.github.com)"]


def test_world_and_cidr_rules_select_fqdn_identities() -> None:
    world = compile_text(cnp("egress:\n- toEntities: [world]\n"))
    assert {e.identity for e in world.entries} >= {ID_WORLD, GITHUB_ID.id, OTHER_ID.id}
    by_label = compile_text(cnp("egress:\n- toEndpoints: [{matchLabels: {reserved:world: ''}}]\n"))
    assert {GITHUB_ID.id, OTHER_ID.id} <= {e.identity for e in by_label.entries}
    cidr = compile_text(cnp("egress:\n- toCIDR: [192.0.2.0/24]\n"))
    assert GITHUB_ID.id in {e.identity for e in cidr.entries} and OTHER_ID.id not in {e.identity for e in cidr.entries}
    excepted = compile_text(cnp("egress:\n- toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.8/29]}]\n"))
    assert GITHUB_ID.id not in {e.identity for e in excepted.entries}
    # naming the learned address's /32 gives it no second identity: the fqdn identity is the address's
    exact = compile_text(cnp("egress:\n- toCIDR: [192.0.2.10/32, 192.0.2.11/32]\n"))
    assert exact.cidr_identities[f"{GITHUB_IP}/32"] == GITHUB_ID.id
    assert GITHUB_ID.id in {e.identity for e in exact.entries}
    assert exact.cidr_identities["192.0.2.11/32"] not in (GITHUB_ID.id, OTHER_ID.id)
    # a CIDR identity remembered from before never takes a number an fqdn identity holds now
    again = compile_policies(load_documents(cnp("egress:\n- toCIDR: [192.0.2.11/32]\n")), ENDPOINTS,
                             [*ALLOC.all(), GITHUB_ID], NAMESPACES,
                             previous_cidr_identities={"192.0.2.11/32": GITHUB_ID.id})
    assert again.cidr_identities["192.0.2.11/32"] != GITHUB_ID.id


def test_rules_view_lists_dns_rules_and_fqdn_peers() -> None:
    text = cnp("egress:" + DNS_RULE + FQDN_RULE)
    compiled = compile_text(text)
    live = [{"ep_id": e.ep_id, "direction": e.direction, "identity": e.identity, "protocol": e.protocol,
             "port": e.port, "port_prefix": e.port_prefix, "action": "allow", "proxy_port": e.proxy_port,
             "packets": 3, "bytes": 300} for e in compiled.entries]
    rows = {r["rule"]: r for r in rule_rows(load_documents(text), compiled, live)}
    assert rows["spec.egress[0]"]["l7"] == ["dns(matchName=api.github.com)", "dns(matchPattern=*.github.com)"]
    assert rows["spec.egress[0]"]["packets"] == 6                      # UDP and TCP 53
    assert rows["spec.egress[1]"]["peers"] == "fqdn(matchName=api.github.com)"
    assert rows["spec.egress[1]"]["entries"] == 1 and rows["spec.egress[1]"]["packets"] == 3


def test_trace_shows_the_dns_proxy_and_fqdn_destinations() -> None:
    compiled = compile_text(cnp("egress:" + DNS_RULE + FQDN_RULE))
    labels = dict(compiled.identity_labels)

    def ipcache(address: str) -> int:
        return compiled.cidr_identities.get(f"{address}/32", ID_WORLD)

    ends = resolve_ends("xwing", GITHUB_IP, 443, "TCP", ENDPOINTS, [], ipcache, {}, labels)
    assert ends.destinations[0].name == "fqdn:*.github.com,fqdn:api.github.com"
    assert trace(compiled, ends, "TCP").verdict == "FORWARDED"
    ends80 = resolve_ends("xwing", GITHUB_IP, 80, "TCP", ENDPOINTS, [], ipcache, {}, labels)
    assert trace(compiled, ends80, "TCP").drop_reason_desc == "POLICY_DENIED"
    xwing = Party(XWING.ipv4, XWING.identity, XWING.id, "default/xwing")
    dns = Party(COREDNS.ipv4, COREDNS.identity, COREDNS.id, "kube-system/coredns")
    result = trace_connection(compiled, xwing, dns, "UDP", 53)
    assert result.egress.verdict == "REDIRECTED" and result.egress.proxy_port == DEFAULT_DNS_PROXY_PORT
    assert result.egress.dns_rules == ["matchName=api.github.com", "matchPattern=*.github.com"]
    text = format_trace(result.to_dict())
    assert f"to the DNS proxy (port {DEFAULT_DNS_PROXY_PORT}), names matchName=api.github.com" in text
    assert "L7 proxy" not in text and str(DEFAULT_PROXY_PORT) not in text
    lonely = compile_text(cnp("egress:" + FQDN_RULE), fqdn=[])
    dropped = format_trace(trace_connection(lonely, xwing, dns, "UDP", 53).to_dict())
    assert "POLICY_DENIED" in dropped and "    note: default/dns spec.egress[0]: toFQDNs" in dropped


def test_replay_and_suggest_take_flows_to_learned_addresses() -> None:
    record = {"time": "t", "verdict": "FORWARDED", "event_type": "policy-verdict", "src_ip": XWING.ipv4,
              "dst_ip": GITHUB_IP, "src_port": 40000, "dst_port": 443, "protocol": "TCP",
              "src_identity": XWING.identity, "dst_identity": GITHUB_ID.id, "src_labels": list(XWING.labels),
              "dst_labels": list(GITHUB_ID.labels), "src_pod": "xwing", "dst_pod": None,
              "src_namespace": "default", "dst_namespace": None, "http_method": None, "http_url": None}
    now = compile_text(cnp("egress:" + DNS_RULE + FQDN_RULE))
    candidate = compile_text(cnp("egress:" + DNS_RULE))
    result = replay([record], now, candidate, ENDPOINTS, {}, {"0.0.0.0/0": ID_WORLD})
    assert result["changed"] == 1
    [row] = result["rows"]
    assert (row["dst"], row["verdict_now"], row["verdict_candidate"]) == (
        "fqdn:*.github.com,fqdn:api.github.com", "FORWARDED", "DROPPED")
    [doc] = suggest_policies([record])
    assert doc["spec"]["egress"] == [{"toCIDR": [f"{GITHUB_IP}/32"],
                                      "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]}]


def test_dns_entries_keep_their_rules_through_deny_resolution() -> None:
    deny = cnp("""
        egressDeny:
        - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system}}]
          toPorts: [{ports: [{port: "53", protocol: TCP}]}]
        """, name="no-tcp-dns")
    compiled = compile_text(cnp("egress:" + DNS_RULE) + deny)
    assert compiled.dns_rules(XWING.id, "egress", COREDNS.identity, 6, 53) is None      # denied: no proxy
    assert compiled.dns_rules(XWING.id, "egress", COREDNS.identity, 17, 53) == (API, ANY_GITHUB)
    assert all(entry_key(e) in compiled.dns for e in compiled.entries if e.proxy_port)
