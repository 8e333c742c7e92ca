"""`policy trace` and `policy rules`, pure: compiled policies of a star-wars-like lab, no kernel.

Trace must agree with the evaluator the connectivity test uses
(``connection_allowed``) on random policies, name the deciding policies, and
follow the datapath on audit mode and L7. Rule counters must land on the rule
that produced each live slot, deny rules included, and show 0 for dead rules.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.errors import NotFoundError
from workbench.lab.identity import IdentityAllocator, identity_labels
from workbench.lab.model import Endpoint, Service, ServicePort
from workbench.policy import compile_policies, load_documents
from workbench.policy.compiler import CompiledPolicy, entry_key
from workbench.policy.evaluate import connection_allowed
from workbench.policy.rules_view import live_entries, rule_rows
from workbench.policy.trace import Party, format_trace, resolve_ends, trace, trace_connection

NAMESPACES = {"default": {"kubernetes.io/metadata.name": "default"},
              "other": {"kubernetes.io/metadata.name": "other", "team": "spies"}}
PODS = [(1, "deathstar-1", "default", {"org": "empire", "class": "deathstar"}),
        (2, "deathstar-2", "default", {"org": "empire", "class": "deathstar"}),
        (3, "tiefighter", "default", {"org": "empire", "class": "tiefighter"}),
        (4, "xwing", "default", {"org": "alliance", "class": "xwing"}),
        (5, "spy", "other", {"org": "empire", "class": "tiefighter"})]
ALLOC = IdentityAllocator()
ENDPOINTS = []
for _id, _pod, _ns, _labels in PODS:
    _ident = ALLOC.allocate(identity_labels(_labels, _ns, NAMESPACES[_ns]))
    ENDPOINTS.append(Endpoint(_id, _pod, _ns, f"10.200.0.{_id}", _ident.id, _ident.labels, _labels,
                              f"wb-t-{_pod}", f"lxc{_id}"))
BY_POD = {ep.pod: ep for ep in ENDPOINTS}
SERVICES = [Service("deathstar", "default", "10.96.0.10", [ServicePort(80, 80)],
                    {"class": "deathstar"}, ["deathstar-1", "deathstar-2"])]
WORLD = "192.0.2.10"


def compile_docs(docs: list[dict[str, Any]] | str) -> CompiledPolicy:
    return compile_policies(load_documents(docs), ENDPOINTS, ALLOC.all(), NAMESPACES)


def cnp(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def party(name: str, compiled: CompiledPolicy, audit: bool = False) -> Party:
    if name in BY_POD:
        ep = BY_POD[name]
        return Party(ep.ipv4, ep.identity, ep.id, f"{ep.namespace}/{ep.pod}", audit)
    from workbench.policy.evaluate import cidr_identity

    return Party(WORLD, cidr_identity(compiled, WORLD), None, "world")


RULE1 = cnp("rule1", {"endpointSelector": {"matchLabels": {"class": "deathstar"}},
                      "ingress": [{"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                                   "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]})


def test_rule1_allows_empire_and_drops_xwing_by_default_deny():
    compiled = compile_docs([RULE1])
    ok = trace_connection(compiled, party("tiefighter", compiled), party("deathstar-1", compiled), "TCP", 80)
    assert (ok.verdict, ok.drop_reason_desc) == ("FORWARDED", "")
    assert ok.to_dict()["ingress_allowed_by"] == ["default/rule1"]
    assert ok.ingress.match_type == "L3-L4"
    bad = trace_connection(compiled, party("xwing", compiled), party("deathstar-1", compiled), "TCP", 80)
    assert (bad.verdict, bad.drop_reason_desc) == ("DROPPED", "POLICY_DENIED")
    as_json = bad.to_dict()
    assert as_json["ingress_denied_by"] == [] and as_json["ingress_allowed_by"] == []
    assert as_json["ingress"]["enforced_by"] == ["default/rule1"]
    assert "default deny from default/rule1" in format_trace(as_json)


def test_deny_rule_is_policy_deny_and_names_the_deny_policy():
    compiled = compile_docs([RULE1, cnp("no-tie", {
        "endpointSelector": {"matchLabels": {"class": "deathstar"}},
        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"class": "tiefighter"}}]}]})])
    result = trace_connection(compiled, party("tiefighter", compiled), party("deathstar-1", compiled), "TCP", 80)
    assert (result.verdict, result.drop_reason_desc) == ("DROPPED", "POLICY_DENY")
    assert result.to_dict()["ingress_denied_by"] == ["default/no-tie"]


def test_egress_drop_means_ingress_not_reached():
    compiled = compile_docs([cnp("x-out", {"endpointSelector": {"matchLabels": {"class": "xwing"}},
                                           "egress": [{"toEntities": ["world"]}]})])
    to_pod = trace_connection(compiled, party("xwing", compiled), party("deathstar-1", compiled), "TCP", 80)
    assert to_pod.verdict == "DROPPED" and not to_pod.ingress.reached
    assert to_pod.to_dict()["egress"]["enforced_by"] == ["default/x-out"]
    to_world = trace_connection(compiled, party("xwing", compiled), party("world", compiled), "UDP", 53)
    assert to_world.verdict == "FORWARDED" and to_world.to_dict()["egress_allowed_by"] == ["default/x-out"]
    assert not to_world.ingress.judged


def test_audit_mode_turns_a_drop_into_audit_with_the_would_be_reason():
    compiled = compile_docs([RULE1])
    result = trace_connection(compiled, party("xwing", compiled), party("deathstar-1", compiled, audit=True),
                              "TCP", 80)
    assert (result.verdict, result.drop_reason_desc) == ("AUDIT", "POLICY_DENIED")
    assert result.ingress.verdict == "AUDIT"


L7 = cnp("rule1", {"endpointSelector": {"matchLabels": {"class": "deathstar"}},
                   "ingress": [{"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                                "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                             "rules": {"http": [{"method": "POST",
                                                                 "path": "/v1/request-landing"}]}}]}]})


def test_l7_request_refused_is_dropped_policy_denied_403():
    compiled = compile_docs([L7])
    src, dst = party("tiefighter", compiled), party("deathstar-1", compiled)
    plain = trace_connection(compiled, src, dst, "TCP", 80)
    assert plain.verdict == "FORWARDED" and plain.ingress.verdict == "REDIRECTED" and plain.l7 is None
    ok = trace_connection(compiled, src, dst, "TCP", 80, method="POST", path="/v1/request-landing")
    assert ok.verdict == "FORWARDED" and ok.l7 is not None and ok.l7.verdict == "FORWARDED"
    bad = trace_connection(compiled, src, dst, "TCP", 80, method="PUT", path="/v1/exhaust-port")
    assert (bad.verdict, bad.drop_reason_desc, bad.http_code) == ("DROPPED", "POLICY_DENIED", 403)
    assert bad.to_dict()["ingress_allowed_by"] == []
    # whole-value match (RE2 full match): a longer path is not the rule's path
    longer = trace_connection(compiled, src, dst, "TCP", 80, method="POST", path="/v1/request-landing/x")
    assert longer.verdict == "DROPPED"


def test_service_reports_every_backend_and_the_worst_verdict():
    compiled = compile_docs([cnp("one", {"endpointSelector": {"matchLabels": {"class": "deathstar"}},
                                         "ingress": [{"fromEndpoints": [{"matchLabels": {"org": "alliance"}}]}]})])
    # only deathstar-1 is selected: deathstar-2 has the same labels, so both are; narrow by a pod-only rule
    ends = resolve_ends("xwing", "deathstar", 80, "TCP", ENDPOINTS, SERVICES, lambda ip: 2, {}, {})
    assert [d.name for d in ends.destinations] == ["default/deathstar-1", "default/deathstar-2"]
    result = trace(compiled, ends, "TCP").to_dict()
    assert result["verdict"] == "FORWARDED" and len(result["backends"]) == 2
    assert result["service"] == "default/deathstar"
    denied = trace(compiled, resolve_ends("tiefighter", "default/deathstar", 80, "TCP", ENDPOINTS, SERVICES,
                                          lambda ip: 2, {2: True}, {}), "TCP").to_dict()
    assert [b["verdict"] for b in denied["backends"]] == ["DROPPED", "AUDIT"]
    assert denied["verdict"] == "DROPPED"


def test_resolve_ends_names_pods_ips_and_refuses_unknown_names():
    ends = resolve_ends("10.200.0.4", "192.0.2.77", 80, "TCP", ENDPOINTS, SERVICES, lambda ip: 16777217, {},
                        {16777217: ("cidr:192.0.2.0/24",)})
    assert ends.source.name == "default/xwing" and ends.destinations[0].identity == 16777217
    assert ends.destinations[0].name == "cidr:192.0.2.0/24"
    assert resolve_ends("other/spy", "xwing", 80, "TCP", ENDPOINTS, SERVICES, lambda ip: 2, {}, {}).source.ep_id == 5
    with pytest.raises(NotFoundError, match="--to 'nowhere'"):
        resolve_ends("xwing", "nowhere", 80, "TCP", ENDPOINTS, SERVICES, lambda ip: 2, {}, {})
    with pytest.raises(NotFoundError, match="no port 81/TCP"):
        resolve_ends("xwing", "deathstar", 81, "TCP", ENDPOINTS, SERVICES, lambda ip: 2, {}, {})


# ---- random policies: trace agrees with the evaluator ------------------------------------------

PEERS = [{"fromEntities": ["all"]}, {"fromEndpoints": [{"matchLabels": {"org": "empire"}}]},
         {"fromEndpoints": [{"matchLabels": {"class": "xwing"}}]}, {"fromEntities": ["world"]},
         {"fromCIDR": ["192.0.2.0/24"]}, {"fromEntities": ["cluster"]}, {}]
SUBJECTS = [{}, {"matchLabels": {"class": "deathstar"}}, {"matchLabels": {"org": "empire"}},
            {"matchLabels": {"class": "xwing"}}]


@st.composite
def rule(draw: st.DrawFn, egress: bool) -> dict[str, Any]:
    out = dict(draw(st.sampled_from(PEERS)))
    if egress:
        out = {k.replace("from", "to"): v for k, v in out.items()}
    port = draw(st.sampled_from(["", "80", "0", "53", "70-90"]))
    if port:
        first, _, last = port.partition("-")
        spec: dict[str, Any] = {"port": first, "protocol": draw(st.sampled_from(["TCP", "UDP", "ANY"]))}
        if last:
            spec["endPort"] = int(last)
        out["toPorts"] = [{"ports": [spec]}]
    return out


@st.composite
def policy_set(draw: st.DrawFn) -> list[dict[str, Any]]:
    docs = []
    for i in range(draw(st.integers(1, 3))):
        spec: dict[str, Any] = {"endpointSelector": draw(st.sampled_from(SUBJECTS))}
        for section, egress in (("ingress", False), ("ingressDeny", False), ("egress", True), ("egressDeny", True)):
            rules = draw(st.lists(rule(egress), max_size=2))
            if rules:
                spec[section] = rules
        if len(spec) == 1:
            spec["ingress"] = [{}]
        docs.append(cnp(f"p{i}", spec))
    return docs


ENDS = ["deathstar-1", "tiefighter", "xwing", "spy", "world"]


@settings(max_examples=150, deadline=None)
@given(policy_set(), st.sampled_from(ENDS), st.sampled_from(ENDS), st.sampled_from(["TCP", "UDP"]),
       st.sampled_from([53, 80, 81, 85]))
def test_trace_agrees_with_the_evaluator(docs, src_name, dst_name, protocol, port):
    if src_name == dst_name or "world" == src_name == dst_name:
        return
    compiled = compile_docs(docs)
    src, dst = party(src_name, compiled), party(dst_name, compiled)
    result = trace_connection(compiled, src, dst, protocol, port)
    expected = connection_allowed(
        compiled, (src.ep_id, src.identity) if src.ep_id else None, (dst.ep_id, dst.identity) if dst.ep_id else None,
        protocol, port, src_identity=src.identity, dst_identity=dst.identity)
    assert (result.verdict == "FORWARDED") == expected, format_trace(result.to_dict())
    if result.verdict == "DROPPED":
        step = result.egress if result.egress.verdict == "DROPPED" else result.ingress
        # explicit deny: named policies; default deny: the policies that made the direction default-deny
        assert (step.drop_reason_desc == "POLICY_DENY") == bool(step.denied_by)
        assert step.drop_reason_desc == "POLICY_DENY" or step.enforced_by


# ---- rule counters ---------------------------------------------------------------------------------

def counted_map(compiled: CompiledPolicy, hits: dict[tuple, int]) -> list[dict[str, Any]]:
    """The live map's records as the writer gives them, with ``hits`` packets on chosen keys."""
    from workbench.datapath.abi import POLICY_PROTOCOL_NAMES

    rows = []
    for e in compiled.entries:
        rows.append({"ep_id": e.ep_id, "direction": e.direction, "identity": e.identity,
                     "protocol": POLICY_PROTOCOL_NAMES[e.protocol], "port": e.port, "port_prefix": e.port_prefix,
                     "action": "deny" if e.deny or e.shadowed else "allow", "proxy_port": e.proxy_port,
                     "rules": list(e.rules), "packets": hits.get(entry_key(e), 0),
                     "bytes": 60 * hits.get(entry_key(e), 0)})
    return rows


def test_rule_counters_follow_the_slots_each_rule_produced():
    text = yaml.safe_dump_all([cnp("mixed", {
        "endpointSelector": {"matchLabels": {"class": "deathstar"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                     "toPorts": [{"ports": [{"port": "80", "protocol": "ANY"}]}]},
                    {"fromEndpoints": [{"matchLabels": {"class": "xwing"}}],
                     "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}],
        "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"class": "tiefighter"}}],
                         "toPorts": [{"ports": [{"port": "80", "protocol": "UDP"}]}]}]})])
    docs = load_documents(text)
    compiled = compile_policies(docs, ENDPOINTS, ALLOC.all(), NAMESPACES)
    tie, ds = BY_POD["tiefighter"].identity, BY_POD["deathstar-1"].identity
    hits = {(1, "ingress", tie, 6, 80, 16): 3,      # tiefighter TCP 80: the allow
            (1, "ingress", tie, 17, 80, 16): 5,     # tiefighter UDP 80: the deny took this slot
            (2, "ingress", ds, 17, 80, 16): 1}      # deathstar UDP 80: ANY in a policy is TCP and UDP
    rows = {r["rule"]: r for r in rule_rows(docs, compiled, counted_map(compiled, hits))}
    assert rows["spec.ingress[0]"]["packets"] == 4 and rows["spec.ingress[0]"]["bytes"] == 240
    assert rows["spec.ingressDeny[0]"]["packets"] == 5 and rows["spec.ingressDeny[0]"]["action"] == "deny"
    assert rows["spec.ingress[1]"]["packets"] == 0 and rows["spec.ingress[1]"]["entries"] == 2   # a dead rule
    assert rows["spec.ingress[1]"]["ports"] == "8080/TCP"


def test_live_entries_read_the_writers_records_back():
    compiled = compile_docs([RULE1])
    back = live_entries(counted_map(compiled, {}))
    assert [entry_key(e) for e in back] == [entry_key(e) for e in compiled.entries]
    assert all(e.rules == ("default/rule1",) for e in back)


def test_a_pod_reaching_itself_is_judged_by_nothing():
    compiled = compile_docs([RULE1])
    me = party("deathstar-1", compiled)
    result = trace_connection(compiled, me, me, "TCP", 80)
    assert result.verdict == "FORWARDED" and not result.egress.judged and not result.ingress.judged
    assert "reaches itself" in format_trace(result.to_dict())
    # through its own service: itself passes, the other backend (not admitted by rule1... it is: empire) too
    ends = resolve_ends("deathstar-1", "deathstar", 80, "TCP", ENDPOINTS, SERVICES, lambda ip: 2, {}, {})
    assert [b["verdict"] for b in trace(compiled, ends, "TCP").to_dict()["backends"]] == ["FORWARDED", "FORWARDED"]
