"""Policy, end to end: YAML policy set -> compiler -> agent -> datapath -> real packets.

Each scenario applies a set of CiliumNetworkPolicy / NetworkPolicy documents
to one shared lab, sends real TCP (HTTP) and UDP probes from pods, and checks
each probe's outcome and, for drops, the datapath's drop-reason counters.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import workbench as wb
from tests.privileged.policydocs import cnp, knp
from workbench.node.probe import __file__ as PROBE_SCRIPT

MANIFEST = Path(__file__).with_name("manifests") / "policy-lab.yaml"
WORLD = "192.0.2.10"
PASS, DROP, DENY = "pass", 133, 181   # expected outcome: passes, or dropped with this reason


@dataclass
class Probe:
    source: str
    target: str          # pod name, "deathstar" (the service) or "world"
    port: int = 80
    protocol: str = "TCP"
    expect: object = PASS


@dataclass
class Scenario:
    name: str
    policy: str
    probes: list[Probe]
    audit: str | None = None
    setup: list[str] = field(default_factory=list)


# Indented like the scenario bodies below, so that one dedent fits both.
BACKEND = "        endpointSelector: {matchLabels: {app: backend}}\n"
XWING = "        endpointSelector: {matchLabels: {class: xwing}}\n"

SCENARIOS = [
    Scenario("no-policy-everything-passes", "", [
        Probe("xwing", "backend", 80), Probe("spy", "backend", 8080), Probe("xwing", "backend", 9000, "UDP"),
        Probe("xwing", "deathstar"), Probe("tiefighter", "world")]),
    Scenario("seed-rule1-l3l4", cnp("rule1", """
        endpointSelector: {matchLabels: {org: empire, class: deathstar}}
        ingress:
        - fromEndpoints: [{matchLabels: {org: empire}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """), [Probe("tiefighter", "deathstar"), Probe("xwing", "deathstar", expect=DROP)]),
    Scenario("l3-labels-any-port", cnp("l3", BACKEND + """
        ingress: [{fromEndpoints: [{matchLabels: {org: empire}}]}]
        """), [Probe("tiefighter", "backend", 8080), Probe("tiefighter", "backend", 9000, "UDP"),
               Probe("xwing", "backend", 8080, expect=DROP)]),
    Scenario("match-expressions-in", cnp("in", BACKEND + """
        ingress:
        - fromEndpoints: [{matchExpressions: [{key: class, operator: In, values: [xwing, tiefighter]}]}]
        """), [Probe("xwing", "backend"), Probe("tiefighter", "backend"),
               Probe("deathstar-0", "backend", expect=DROP)]),
    Scenario("match-expressions-notin", cnp("notin", BACKEND + """
        ingress: [{fromEndpoints: [{matchExpressions: [{key: org, operator: NotIn, values: [alliance]}]}]}]
        """), [Probe("tiefighter", "backend"), Probe("xwing", "backend", expect=DROP)]),
    Scenario("match-expressions-exists-doesnotexist", cnp("exists", BACKEND + """
        ingress:
        - fromEndpoints: [{matchExpressions: [{key: org, operator: Exists}, {key: class, operator: In, values: [xwing]}]}]
        - fromEndpoints: [{matchExpressions: [{key: org, operator: DoesNotExist}]}]
        """), [Probe("xwing", "backend"), Probe("tiefighter", "backend", expect=DROP)]),
    Scenario("namespaced-selectors-stay-in-their-namespace", cnp("ns", BACKEND + """
        ingress: [{fromEndpoints: [{matchLabels: {org: empire}}]}]
        """), [Probe("tiefighter", "backend"), Probe("spy", "backend", expect=DROP)]),
    Scenario("selector-naming-another-namespace", cnp("crossns", BACKEND + """
        ingress: [{fromEndpoints: [{matchLabels: {org: empire, "k8s:io.kubernetes.pod.namespace": other}}]}]
        """), [Probe("spy", "backend"), Probe("tiefighter", "backend", expect=DROP)]),
    Scenario("l4-port", cnp("port", BACKEND + """
        ingress:
        - fromEndpoints: [{matchLabels: {class: xwing}}]
          toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
        """), [Probe("xwing", "backend", 8080), Probe("xwing", "backend", 80, expect=DROP)]),
    Scenario("l4-port-range", cnp("range", BACKEND + """
        ingress:
        - fromEndpoints: [{matchLabels: {class: xwing}}]
          toPorts: [{ports: [{port: "8000", endPort: 9000, protocol: TCP}]}]
        """), [Probe("xwing", "backend", 8080), Probe("xwing", "backend", 9000),
               Probe("xwing", "backend", 80, expect=DROP)]),
    Scenario("udp-port", cnp("udp", BACKEND + """
        ingress:
        - fromEndpoints: [{matchLabels: {class: xwing}}]
          toPorts: [{ports: [{port: "9000", protocol: UDP}]}]
        """), [Probe("xwing", "backend", 9000, "UDP"), Probe("xwing", "backend", 9000, "TCP", expect=DROP)]),
    Scenario("protocol-any", cnp("any", BACKEND + """
        ingress:
        - fromEndpoints: [{matchLabels: {class: xwing}}]
          toPorts: [{ports: [{port: "9000", protocol: ANY}]}]
        """), [Probe("xwing", "backend", 9000, "UDP"), Probe("xwing", "backend", 9000, "TCP"),
               Probe("xwing", "backend", 8080, expect=DROP)]),
    Scenario("l4-only-any-peer", cnp("l4only", BACKEND + """
        ingress: [{toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
        """), [Probe("xwing", "backend", 8080), Probe("spy", "backend", 8080),
               Probe("xwing", "backend", 80, expect=DROP)]),
    Scenario("egress-to-cidr", cnp("cidr", XWING + """
        egress: [{toCIDR: [192.0.2.0/24]}]
        """), [Probe("xwing", "world"), Probe("xwing", "backend", expect=DROP)]),
    Scenario("egress-cidr-with-except", cnp("except", XWING + """
        egress: [{toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.10/32]}]}]
        """), [Probe("xwing", "world", expect=DROP), Probe("tiefighter", "world")]),
    Scenario("entity-world", cnp("world", XWING + """
        egress: [{toEntities: [world]}]
        """), [Probe("xwing", "world"), Probe("xwing", "world", 80, "UDP"),
               Probe("xwing", "backend", expect=DROP)]),
    Scenario("entity-cluster", cnp("cluster", XWING + """
        egress: [{toEntities: [cluster]}]
        """), [Probe("xwing", "backend"), Probe("xwing", "deathstar"), Probe("xwing", "world", expect=DROP)]),
    Scenario("entity-all", cnp("all", XWING + """
        egress: [{toEntities: [all]}]
        """), [Probe("xwing", "backend"), Probe("xwing", "world")]),
    Scenario("deny-wins-over-allow", cnp("allow-empire", BACKEND + """
        ingress: [{fromEndpoints: [{matchLabels: {org: empire}}]}]
        ingressDeny: [{fromEndpoints: [{matchLabels: {class: tiefighter}}]}]
        """), [Probe("tiefighter", "backend", expect=DENY), Probe("deathstar-0", "backend"),
               Probe("xwing", "backend", expect=DROP)]),
    Scenario("egress-deny-port", cnp("egress-deny", XWING + """
        egress: [{toEntities: [all]}]
        egressDeny: [{toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
        """), [Probe("xwing", "backend", 8080), Probe("xwing", "backend", 80, expect=DENY),
               Probe("xwing", "world", expect=DENY)]),
    Scenario("networkpolicy-pod-selector", knp("np-pods", """
        podSelector: {matchLabels: {app: backend}}
        ingress: [{from: [{podSelector: {matchLabels: {class: xwing}}}]}]
        """), [Probe("xwing", "backend"), Probe("tiefighter", "backend", expect=DROP),
               Probe("spy", "backend", expect=DROP)]),
    Scenario("networkpolicy-namespace-selector", knp("np-ns", """
        podSelector: {matchLabels: {app: backend}}
        ingress: [{from: [{namespaceSelector: {matchLabels: {team: spies}}}]}]
        """), [Probe("spy", "backend"), Probe("xwing", "backend", expect=DROP)]),
    Scenario("networkpolicy-ports", knp("np-ports", """
        podSelector: {matchLabels: {app: backend}}
        ingress: [{ports: [{port: 9000, protocol: UDP}, {port: 8080}]}]
        """), [Probe("xwing", "backend", 8080), Probe("spy", "backend", 9000, "UDP"),
               Probe("xwing", "backend", 80, expect=DROP)]),
    Scenario("networkpolicy-ipblock-except", knp("np-ipblock", """
        podSelector: {matchLabels: {class: xwing}}
        policyTypes: [Egress]
        egress: [{to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.10/32]}}]}]
        """), [Probe("xwing", "world", expect=DROP), Probe("xwing", "backend", expect=DROP)]),
    Scenario("networkpolicy-ipblock-selects-pods-in-range", knp("np-ipblock-pods", """
        podSelector: {matchLabels: {class: xwing}}
        policyTypes: [Egress]
        egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]
        """), [Probe("xwing", "backend"), Probe("xwing", "deathstar"), Probe("xwing", "world", expect=DROP)]),
    Scenario("cilium-cidr-never-selects-pods", cnp("cidr-pods", XWING + """
        egress: [{toCIDR: [10.0.0.0/8, 192.0.2.0/24]}]
        """), [Probe("xwing", "world"), Probe("xwing", "backend", expect=DROP)]),
    Scenario("named-port-ingress-is-the-servers-own-port", cnp("named-in", BACKEND + """
        ingress:
        - fromEndpoints: [{matchLabels: {class: xwing}}]
          toPorts: [{ports: [{port: http-alt, protocol: TCP}]}]
        """), [Probe("xwing", "backend", 8080), Probe("xwing", "backend", 80, expect=DROP)]),
    Scenario("named-port-egress-is-the-peers-port", knp("np-named-out", """
        podSelector: {matchLabels: {class: xwing}}
        policyTypes: [Egress]
        egress: [{ports: [{port: http}]}]
        """), [Probe("xwing", "backend", 80), Probe("xwing", "backend", 8080, expect=DROP),
               Probe("xwing", "deathstar", 80, expect=DROP)]),   # the deathstar pods name no port
    Scenario("networkpolicy-egress-deny-all", knp("np-deny-egress", """
        podSelector: {matchLabels: {class: tiefighter}}
        policyTypes: [Egress]
        """), [Probe("tiefighter", "deathstar", expect=DROP), Probe("tiefighter", "world", expect=DROP),
               Probe("xwing", "deathstar")]),
    Scenario("replies-of-allowed-connections-pass", cnp("xwing-out", XWING + """
        egress: [{toEndpoints: [{matchLabels: {app: backend}}]}]
        ingress: [{}]
        """), [Probe("xwing", "backend"), Probe("xwing", "backend", 9000, "UDP")]),
    Scenario("audit-mode-lets-drops-through", cnp("rule1", """
        endpointSelector: {matchLabels: {org: empire, class: deathstar}}
        ingress:
        - fromEndpoints: [{matchLabels: {org: empire}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """), [Probe("xwing", "deathstar"), Probe("tiefighter", "deathstar")], audit="deathstar"),
]


@pytest.fixture(scope="module")
def lab():
    name = f"p{uuid.uuid4().hex[:6]}"
    lab = wb.Lab.up(str(MANIFEST), name=name)
    try:
        yield lab
    finally:
        lab.down()


def endpoints(lab) -> dict[str, dict]:
    frame = lab.endpoints
    eps = {row["pod"]: row for row in frame.to_dict(orient="records")}
    for index, pod in enumerate(sorted(p for p in eps if p.startswith("deathstar-"))):
        eps[f"deathstar-{index}"] = eps[pod]
    # the service as a target; read now, so probes need no agent (the SIGKILL test)
    eps["deathstar"] = {"ipv4": lab.services.set_index("name").loc["deathstar", "cluster_ip"]}
    return eps


def address(lab, eps: dict, target: str) -> str:
    return WORLD if target == "world" else eps[target]["ipv4"]


def drop_counts(lab) -> dict[int, int]:
    counts: dict[int, int] = {}
    for row in lab.call("datapath.metrics"):
        if row["verdict"] == "DROPPED":
            counts[row["drop_reason"]] = counts.get(row["drop_reason"], 0) + row["packets"]
    return counts


def run_probes(lab, eps: dict, probes: list[Probe]) -> list[dict]:
    results: list[dict] = [{}] * len(probes)
    by_source: dict[str, list[int]] = {}
    for i, probe in enumerate(probes):
        by_source.setdefault(probe.source, []).append(i)
    for source, indexes in by_source.items():
        payload = [{"address": address(lab, eps, probes[i].target), "port": probes[i].port,
                    "protocol": probes[i].protocol, "path": "/v1/" if probes[i].target == "deathstar" else "/"}
                   for i in indexes]
        out = lab.exec(eps[source]["pod"], [sys.executable, "-I", PROBE_SCRIPT], input=json.dumps(payload))
        for i, result in zip(indexes, json.loads(out.stdout), strict=True):
            results[i] = result
    return results


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_policy_scenario(lab, scenario: Scenario):
    eps = endpoints(lab)
    probes = scenario.probes
    try:
        if scenario.policy:
            lab.policy.apply(scenario.policy)
        if scenario.audit:
            lab.policy.audit(True, pod=eps["deathstar-0"]["pod"])
            lab.policy.audit(True, pod=eps["deathstar-1"]["pod"])
        before = drop_counts(lab)
        results = run_probes(lab, eps, probes)
        after = drop_counts(lab)
    finally:
        lab.policy.audit(False)
        lab.policy.delete(all=True)
    outcomes = [(p.source, p.target, p.port, p.protocol, "pass" if r["ok"] else "fail", r["detail"])
                for p, r in zip(probes, results, strict=True)]
    for probe, outcome in zip(probes, outcomes, strict=True):
        expected = "pass" if probe.expect == PASS else "fail"
        assert outcome[4] == expected, f"{scenario.name}: {outcome} expected {probe.expect}"
    increased = {reason for reason, n in after.items() if n > before.get(reason, 0)}
    expected_reasons = {p.expect for p in probes if p.expect != PASS}
    assert increased == expected_reasons, f"{scenario.name}: drop reasons {increased}, expected {expected_reasons}"


def test_delete_restores_connectivity(lab):
    eps = endpoints(lab)
    lab.policy.apply(SCENARIOS[1].policy)
    assert not run_probes(lab, eps, [Probe("xwing", "deathstar")])[0]["ok"]
    lab.policy.delete("rule1")
    assert run_probes(lab, eps, [Probe("xwing", "deathstar")])[0]["ok"]


def test_anti_spoofing_drops_forged_source(lab):
    eps = endpoints(lab)
    before = drop_counts(lab)
    forged = "10.244.250.250"
    lab.exec("xwing", ["ip", "addr", "add", f"{forged}/32", "dev", "eth0"], check=True)
    try:
        out = lab.exec("xwing", ["curl", "-s", "-m", "2", "--interface", forged,
                                 f"http://{eps['backend']['ipv4']}/"])
    finally:
        lab.exec("xwing", ["ip", "addr", "del", f"{forged}/32", "dev", "eth0"])
    assert out.exit_code != 0
    after = drop_counts(lab)
    assert after.get(132, 0) > before.get(132, 0)
    assert run_probes(lab, eps, [Probe("xwing", "backend")])[0]["ok"]


def test_policy_survives_agent_sigkill(lab):
    eps = endpoints(lab)
    lab.policy.apply(SCENARIOS[1].policy)
    try:
        pid = lab.status()["agent_pid"]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
        results = run_probes(lab, eps, [Probe("xwing", "deathstar"), Probe("tiefighter", "deathstar")])
        assert [r["ok"] for r in results] == [False, True], results
        again = wb.Lab.up(str(MANIFEST), name=lab.name)   # a new agent adopts the running lab
        assert again.status()["agent_pid"] != pid
        results = run_probes(again, eps, [Probe("xwing", "deathstar"), Probe("tiefighter", "deathstar")])
        assert [r["ok"] for r in results] == [False, True], results
        assert set(again.policy.get()["name"]) == {"rule1"}
    finally:
        lab.policy.delete(all=True)
