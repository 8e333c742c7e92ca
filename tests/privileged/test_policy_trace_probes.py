"""`policy trace` against real packets, and `policy rules` counters, in a real star-wars lab.

For each policy set, the connectivity test's probe matrix (pod -> pod, pod ->
service, pod -> world, TCP as HTTP GET and UDP) is run with trace as the
expectation: every probe must pass exactly when trace says the connection
(and its GET request) would not be DROPPED.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

import workbench as wb
from tests.privileged.policydocs import DEATHSTAR, cnp, knp
from workbench.client.connectivity import Probe, run_connectivity_test

RULE1 = cnp("rule1", DEATHSTAR + """
        ingress:
        - fromEndpoints: [{matchLabels: {org: empire}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """)

# name -> (policy documents, audit the deathstar pods)
POLICY_SETS = {
    "none": ("", False),
    "l3l4-rule1": (RULE1, False),
    "deny-wins": (cnp("cluster-in", DEATHSTAR + """
        ingress: [{fromEntities: [cluster]}]
        ingressDeny: [{fromEndpoints: [{matchLabels: {class: tiefighter}}]}]
        """), False),
    "cidr-and-entities": (cnp("xwing-out", """
        endpointSelector: {matchLabels: {class: xwing}}
        egress: [{toCIDRSet: [{cidr: 192.0.2.0/24}]}]
        """) + "---\n" + cnp("tie-out", """
        endpointSelector: {matchLabels: {class: tiefighter}}
        egress: [{toEntities: [cluster]}]
        """), False),
    "namespace-selectors": (cnp("ns-in", DEATHSTAR + """
        ingress:
        - fromEndpoints:
          - matchLabels: {"io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name": default, class: xwing}
        """), False),
    "audit": (RULE1, True),
    "l7-http": (cnp("rule1", DEATHSTAR + """
        ingress:
        - fromEndpoints: [{matchLabels: {org: empire}}]
          toPorts:
          - ports: [{port: "80", protocol: TCP}]
            rules: {http: [{method: GET, path: "/v1/.*"}]}
        - fromEndpoints: [{matchLabels: {class: xwing}}]
          toPorts:
          - ports: [{port: "80", protocol: TCP}]
            rules: {http: [{method: POST, path: /v1/request-landing}]}
        """), False),
    "networkpolicy": (knp("np", """
        podSelector: {matchLabels: {class: deathstar}}
        ingress: [{from: [{podSelector: {matchLabels: {class: tiefighter}}}], ports: [{port: 80}]}]
        """) + "---\n" + knp("np-out", """
        podSelector: {matchLabels: {class: tiefighter}}
        policyTypes: [Egress]
        egress: [{ports: [{port: 80, protocol: UDP}]}]
        """), False),
    "egress": (cnp("xwing-egress", """
        endpointSelector: {matchLabels: {class: xwing}}
        egress:
        - toEndpoints: [{matchLabels: {class: deathstar}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        - toEntities: [world]
        egressDeny:
        - toCIDR: [192.0.2.0/24]
          toPorts: [{ports: [{port: "80", protocol: UDP}]}]
        """), False),
}


@pytest.fixture(scope="module")
def lab():
    lab = wb.Lab.up(name=f"expl{uuid.uuid4().hex[:6]}")
    try:
        yield lab
    finally:
        lab.down()


def trace_expectation(lab: wb.Lab, undecided: list[Probe]):
    """Trace as the connectivity test's expectation; a service probe whose backends would get different
    verdicts depends on the backend the socket LB picks: it goes to ``undecided`` instead."""
    def expect(probes: list[Probe]) -> list[bool]:
        answers = []
        for probe in probes:
            destination = probe.address if probe.kind == "pod-to-world" else probe.destination
            http = {"method": "GET", "path": probe.path} if probe.protocol == "TCP" else {}
            report = lab.policy.trace(probe.source, destination, probe.port, probe.protocol, **http)
            if len({b["verdict"] != "DROPPED" for b in report.get("backends", [])}) > 1:
                undecided.append(probe)
            answers.append(report["verdict"] != "DROPPED")
        return answers
    return expect


@pytest.mark.parametrize("name", list(POLICY_SETS))
def test_trace_agrees_with_real_probes(lab, name):
    documents, audit = POLICY_SETS[name]
    try:
        if documents:
            lab.policy.apply(documents)
        if audit:
            for pod in lab.endpoints.pod:
                if pod.startswith("deathstar-"):
                    lab.policy.audit(True, pod=pod)
        undecided: list[Probe] = []
        report = run_connectivity_test(lab.name, expect=trace_expectation(lab, undecided))
    finally:
        lab.policy.audit(False)
        lab.policy.delete(all=True)
    assert report.probes, "no probes planned"
    # only a backend calling its own service may see backends disagree here (it may reach itself, which no
    # policy judges); such a probe is checked against the backend it reached by neither side
    assert all(p.source.startswith("deathstar-") for p in undecided), undecided
    unexpected = [(p.source, p.destination, p.port, p.protocol, p.expected, p.ok, p.detail)
                  for p in report.unexpected if p not in undecided]
    assert not unexpected, f"{name}: trace disagrees with real probes: {unexpected}"
    if name != "none":   # every set changes something the matrix sees
        assert not all(p.expected for p in report.probes) or name == "audit", name


def test_trace_json_from_the_cli_names_policies_and_reasons(lab):
    try:
        lab.policy.apply(RULE1 + "---\n" + cnp("no-tie-udp", DEATHSTAR + """
        ingressDeny: [{fromEndpoints: [{matchLabels: {class: tiefighter}}],
                       toPorts: [{ports: [{port: "80", protocol: UDP}]}]}]
        """))

        def cli(*args: str) -> dict:
            out = subprocess.run([sys.executable, "-m", "workbench", "policy", "trace", "--lab", lab.name, "--json",
                                  *args], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        xwing = cli("--from", "xwing", "--to", "deathstar", "--port", "80")
        assert (xwing["verdict"], xwing["drop_reason_desc"]) == ("DROPPED", "POLICY_DENIED")
        # a deny-only policy selects the direction too (default deny, as in Cilium)
        assert xwing["ingress"]["enforced_by"] == ["default/no-tie-udp", "default/rule1"] and len(xwing["backends"]) == 2
        tie = cli("--from", "tiefighter", "--to", "deathstar", "--port", "80")
        assert (tie["verdict"], tie["drop_reason_desc"]) == ("FORWARDED", "")
        assert tie["ingress_allowed_by"] == ["default/rule1"] and tie["egress_allowed_by"] == []
        pod = lab.endpoints.set_index("pod")
        first = sorted(p for p in pod.index if p.startswith("deathstar-"))[0]
        udp = cli("--from", "tiefighter", "--to", str(pod.loc[first, "ipv4"]), "--port", "80", "--protocol", "udp")
        assert (udp["verdict"], udp["drop_reason_desc"]) == ("DROPPED", "POLICY_DENY")
        assert udp["ingress_denied_by"] == ["default/no-tie-udp"]
        world = cli("--from", "xwing", "--to", "192.0.2.10", "--port", "80")
        assert world["verdict"] == "FORWARDED" and world["destination"]["name"] == "world"
        bad = subprocess.run([sys.executable, "-m", "workbench", "policy", "trace", "--lab", lab.name,
                              "--from", "xwing", "--to", "nowhere", "--port", "80"],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    finally:
        lab.policy.delete(all=True)


def test_rule_counters_count_real_connections_and_show_dead_rules(lab):
    try:
        lab.policy.apply(RULE1 + "---\n" + cnp("dead", DEATHSTAR + """
        ingress: [{fromEndpoints: [{matchLabels: {class: nobody}}]}]
        """))
        before = lab.policy.rules.set_index(["policy", "rule"])
        assert before.loc[("default/rule1", "spec.ingress[0]"), "packets"] == 0
        for _ in range(3):
            out = lab.exec("tiefighter", "curl -s -m 3 -XPOST deathstar.default.svc.cluster.local/v1/request-landing")
            assert out.stdout.strip() == "Ship landed", out
        rules = lab.policy.rules.set_index(["policy", "rule"])
        assert rules.loc[("default/rule1", "spec.ingress[0]"), "packets"] == 3   # one first packet each
        assert rules.loc[("default/rule1", "spec.ingress[0]"), "bytes"] > 0
        assert rules.loc[("default/dead", "spec.ingress[0]"), "packets"] == 0
        assert rules.loc[("default/dead", "spec.ingress[0]"), "entries"] == 0   # selects no peer at all
        table = subprocess.run([sys.executable, "-m", "workbench", "policy", "rules", "--lab", lab.name, "--json"],
                               capture_output=True, text=True, timeout=60)
        assert table.returncode == 0, table.stderr
        assert {(r["policy"], r["rule"]) for r in json.loads(table.stdout)} == set(rules.index)
    finally:
        lab.policy.delete(all=True)
