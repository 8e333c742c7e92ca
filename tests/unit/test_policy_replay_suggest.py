"""`policy replay` and `policy suggest`, pure, on synthetic flows of a star-wars-like lab.

Replay: which rows of a flow table count (connection starts once, HTTP
requests), and which verdicts a candidate changes. Suggest: the policies it
builds select peers by labels, and replay of the flows they were built from
under them drops nothing that passed, while a connection never seen is
dropped (hypothesis, on random traffic).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from test_policy_trace import ALLOC, BY_POD, ENDPOINTS, NAMESPACES, RULE1, WORLD

from workbench.lab.ipam import BASE_IPCACHE
from workbench.policy import compile_policies, load_documents
from workbench.policy.compiler import CompiledPolicy
from workbench.policy.replay import connection_starts, replay, request_path
from workbench.policy.suggest import exact_path, suggest_policies, to_yaml, workload_labels
from workbench.policy.trace import Party, trace_connection

BASE = dict(BASE_IPCACHE)


def record(src: str, dst: str, port: int, protocol: str = "TCP", verdict: str = "FORWARDED",
           method: str | None = None, path: str = "/", src_port: int = 40000) -> dict[str, Any]:
    def side(name: str) -> dict[str, Any]:
        if name in BY_POD:
            ep = BY_POD[name]
            return {"ip": ep.ipv4, "identity": ep.identity, "labels": list(ep.labels), "pod": ep.pod,
                    "namespace": ep.namespace}
        return {"ip": name, "identity": 2, "labels": ["reserved:world"], "pod": None, "namespace": None}

    s, d = side(src), side(dst)
    out = {"time": "2026-01-01T00:00:00Z", "verdict": verdict, "event_type": "l7" if method else "policy-verdict",
           "src_port": src_port, "dst_port": port, "protocol": protocol, "http_method": method,
           "http_url": f"http://{d['ip']}{path}" if method else None}
    for prefix, values in (("src", s), ("dst", d)):
        for key, value in values.items():
            out[f"{prefix}_{key}"] = value
    return out


def compile_docs(docs: Any) -> CompiledPolicy:
    return compile_policies(load_documents(docs), ENDPOINTS, ALLOC.all(), NAMESPACES)


def test_connection_starts_keeps_one_row_per_connection_and_every_request():
    rows = [record("xwing", "deathstar-1", 80),                                    # egress policy-verdict
            record("xwing", "deathstar-1", 80),                                    # ingress policy-verdict
            {**record("deathstar-1", "xwing", 40000), "event_type": "trace"},      # a reply trace
            record("tiefighter", "deathstar-1", 80, method="POST", path="/v1/request-landing"),
            {**record("deathstar-1", "tiefighter", 40000, method="POST"), "is_reply": True},
            record("xwing", "deathstar-1", 80, src_port=40001, verdict="DROPPED"),
            record("xwing", WORLD, 53, "UDP")]
    frame = pd.DataFrame(rows)
    frame["is_reply"] = frame.get("is_reply", pd.Series([None] * len(frame))).astype("boolean")
    frame.loc[2, "is_reply"] = True
    starts = connection_starts(frame)
    assert sorted((r["src_pod"], r["dst_port"], r["src_port"], r["http_method"] or "") for r in starts) == [
        ("tiefighter", 80, 40000, "POST"), ("xwing", 53, 40000, ""), ("xwing", 80, 40000, ""),
        ("xwing", 80, 40001, "")]
    assert request_path("http://deathstar.default.svc/v1/x?y=1") == "/v1/x?y=1"


def test_replay_reports_only_changed_verdicts_with_the_candidates_policies():
    records = [record("xwing", "deathstar-1", 80), record("tiefighter", "deathstar-1", 80),
               record("xwing", WORLD, 80)]
    result = replay(records, CompiledPolicy(), compile_docs([RULE1]), ENDPOINTS, {}, BASE)
    assert (result["judged"], result["changed"], result["skipped"]) == (3, 1, 0)
    row = result["rows"][0]
    assert (row["src"], row["dst"], row["verdict_now"], row["verdict_candidate"]) == (
        "default/xwing", "default/deathstar-1", "FORWARDED", "DROPPED")
    assert row["drop_reason_desc_candidate"] == "POLICY_DENIED"
    gone = {**record("xwing", "deathstar-1", 80), "src_ip": "10.200.9.9"}
    assert replay([gone], CompiledPolicy(), CompiledPolicy(), ENDPOINTS, {}, BASE)["skipped"] == 1


def test_suggest_selects_pods_by_labels_the_world_by_cidr_and_http_by_exact_path():
    records = [record("tiefighter", "deathstar-1", 80, method="POST", path="/v1/request-landing"),
               record("tiefighter", "deathstar-2", 80, method="GET", path="/v1/x.y?z=1"),
               record("spy", "deathstar-1", 8080), record("xwing", WORLD, 53, "UDP"),
               record("xwing", "deathstar-1", 443, verdict="DROPPED")]
    docs = suggest_policies(records)
    by_name = {d["metadata"]["name"]: d for d in docs}
    assert {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs} == {
        ("default", "deathstar"), ("default", "tiefighter"), ("default", "xwing"), ("other", "tiefighter")}
    by_name = {d["metadata"]["name"]: d for d in docs if d["metadata"]["namespace"] == "default"}
    assert {d["metadata"]["name"] for d in suggest_policies(records, "other")} == {"tiefighter"}
    ingress = by_name["deathstar"]["spec"]["ingress"]
    assert {"fromEndpoints": [{"matchLabels": {"class": "tiefighter", "org": "empire"}}], "toPorts": [
        {"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [
            {"method": "GET", "path": exact_path("/v1/x.y?z=1")},
            {"method": "POST", "path": "/v1/request-landing"}]}}]} in ingress
    spy = next(r for r in ingress if r["fromEndpoints"][0]["matchLabels"].get("k8s:io.kubernetes.pod.namespace"))
    assert spy["toPorts"] == [{"ports": [{"port": "8080", "protocol": "TCP"}]}]
    assert by_name["xwing"]["spec"] == {"endpointSelector": {"matchLabels": {"class": "xwing", "org": "alliance"}},
                                        "egress": [{"toCIDR": [f"{WORLD}/32"], "toPorts": [
                                            {"ports": [{"port": "53", "protocol": "UDP"}]}]}]}
    text = to_yaml(docs)
    assert "10.200.0." not in text                      # peers by labels, never by pod address
    assert len(load_documents(text)) == 4   # tiefighter twice: in default and, as the spy, in other
    assert exact_path("/v1/x.y?z=1") == r"/v1/x\.y\?z=1"
    assert workload_labels(["k8s:pod-template-hash=abc", "k8s:app=a", "k8s:io.kubernetes.pod.namespace=x",
                            "k8s:io.cilium.k8s.namespace.labels.team=t", "reserved:host"]) == (("app", "a"),)


ENDS = ["deathstar-1", "deathstar-2", "tiefighter", "xwing", "spy", WORLD, "192.0.2.20"]
PATHS = ["/", "/v1/request-landing", "/v1/a.b", "/x?y=(1)"]


@st.composite
def traffic(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(1, 12))):
        src = draw(st.sampled_from(ENDS))
        dst = draw(st.sampled_from([e for e in ENDS if e != src]))
        if src not in BY_POD and dst not in BY_POD:
            continue
        protocol = draw(st.sampled_from(["TCP", "UDP"]))
        port = draw(st.sampled_from([53, 80, 443, 8080]))
        method = draw(st.sampled_from([None, "GET", "POST"])) if protocol == "TCP" and dst in BY_POD else None
        out.append(record(src, dst, port, protocol, method=method, path=draw(st.sampled_from(PATHS)),
                          src_port=40000 + i))
    return out


@settings(max_examples=80, deadline=None)
@given(traffic())
def test_suggested_policies_allow_what_they_were_built_from_and_deny_the_unseen(records):
    docs = suggest_policies(records)
    if not docs:
        return
    candidate = compile_docs(docs)
    result = replay(records, CompiledPolicy(), candidate, ENDPOINTS, {}, BASE)
    assert result["changed"] == 0, (result["rows"], to_yaml(docs))
    # a port never seen, to a pod that received traffic (its ingress is now default-deny)
    receivers = [r["dst_pod"] for r in records if r["dst_pod"]]
    if receivers:
        dst = BY_POD[receivers[0]]
        for src_name in ("xwing", "tiefighter", WORLD):
            src = BY_POD.get(src_name)
            if src is dst:
                continue   # a pod reaching itself is judged by nothing
            src_party = Party(src.ipv4, src.identity, src.id) if src else Party(WORLD, 2)
            probe = trace_connection(candidate, src_party, Party(dst.ipv4, dst.identity, dst.id), "TCP", 9999)
            assert probe.verdict == "DROPPED", to_yaml(docs)


def test_replay_refuses_malformed_records_in_one_line():
    import pytest

    from workbench.errors import ValidationError

    good = record("xwing", "deathstar-1", 80)
    for bad, message in (({**good, "src_ip": "nope"}, "src_ip 'nope'"), ({**good, "dst_port": "80"}, "dst_port"),
                         ({**good, "protocol": "ICMP"}, "protocol 'ICMP'"), ({"dst_ip": "1.2.3.4"}, "src_ip")):
        with pytest.raises(ValidationError, match=message) as err:
            replay([good, bad], CompiledPolicy(), CompiledPolicy(), ENDPOINTS, {}, BASE)
        assert "replay flow 1" in str(err.value) and len(str(err.value).splitlines()) == 1
