"""`policy replay` and `policy suggest` in a real star-wars lab: predictions checked by applying and re-sending.

Real traffic (the connectivity test's probe matrix) is recorded, a candidate
policy is replayed against the recorded flows (the policy map and the applied
policies must stay as they were), then applied, and the same probes are sent
again: exactly the probes replay predicted DROPPED must fail.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
import yaml

import workbench as wb
from tests.privileged.policydocs import DEATHSTAR, cnp
from workbench.client.connectivity import run_connectivity_test

CANDIDATE = cnp("rule1", DEATHSTAR + """
        ingress:
        - fromEndpoints: [{matchLabels: {org: empire}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """) + "---\n" + cnp("xwing-no-udp-out", """
        endpointSelector: {matchLabels: {class: xwing}}
        egress: [{toEntities: [all]}]
        egressDeny: [{toPorts: [{ports: [{port: "80", protocol: UDP}]}]}]
        """)
VISIBILITY = cnp("rule1", DEATHSTAR + """
        ingress:
        - fromEntities: [all]
          toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{}]}}]
        """)
L7_CANDIDATE = cnp("rule1", DEATHSTAR + """
        ingress:
        - fromEntities: [all]
          toPorts:
          - ports: [{port: "80", protocol: TCP}]
            rules: {http: [{method: POST, path: /v1/request-landing}]}
        """)


@pytest.fixture(scope="module")
def lab():
    lab = wb.Lab.up(name=f"expl{uuid.uuid4().hex[:6]}")
    try:
        yield lab
    finally:
        lab.down()


def settled_flows(lab, **filters):
    """The lab's flows once the last probes' rows are in (the L7 recorder and the ring reader batch)."""
    previous = -1
    for _ in range(20):
        frame = lab.flows(**filters)
        if len(frame) == previous:
            return frame
        previous = len(frame)
        time.sleep(0.3)
    return frame


def everything_passes(probes):
    return [True] * len(probes)


def probe_names(lab) -> dict[str, list[str]]:
    """A probe's destination -> the "namespace/pod" names its connection may reach."""
    eps = lab.endpoints
    names = {row.pod: [f"{row.namespace}/{row.pod}"] for row in eps.itertuples()}
    for svc in lab.services.itertuples():
        names[f"{svc.namespace}/{svc.name}"] = [f"{svc.namespace}/{b}" for b in svc.backends]
    names["world"] = ["world"]
    return names


def predicted_drops(frame) -> set[tuple[str, str, int, str]]:
    dropped = frame[frame.verdict_candidate == "DROPPED"]
    return {(r.src, r.dst, int(r.dst_port), r.protocol) for r in dropped.itertuples()}


def check_prediction(lab, frame, report) -> None:
    drops = predicted_drops(frame)
    names = probe_names(lab)
    wrong = []
    checked = 0
    for probe in report.probes:
        src = names[probe.source][0]
        targets = names[probe.destination]
        if src in targets and len(targets) > 1:
            continue   # a backend calling its own service may reach itself, which no policy judges
        verdicts = {(src, dst, probe.port, probe.protocol) in drops for dst in targets}
        if len(verdicts) > 1:
            continue   # the service's backends would differ: which one the probe hit decides
        checked += 1
        if probe.ok == verdicts.pop():
            wrong.append((probe.source, probe.destination, probe.port, probe.protocol, probe.ok, probe.detail))
    assert not wrong, f"replay predicted otherwise for {wrong}; predicted drops {sorted(drops)}"
    assert checked >= len(report.probes) - 2


def test_replay_predicts_what_applying_does_and_applies_nothing(lab):
    lab.policy.delete(all=True)
    first = run_connectivity_test(lab.name, expect=everything_passes)
    assert all(p.ok for p in first.probes), first.format_text()
    map_before = lab.policy.map.drop(columns=["packets", "bytes"]).to_dict(orient="records")
    frame = lab.policy.replay(CANDIDATE, settled_flows(lab))
    assert lab.policy.map.drop(columns=["packets", "bytes"]).to_dict(orient="records") == map_before
    assert lab.policy.get().empty
    # a pod that reaches itself through the service never crosses the datapath: no flow to judge
    assert frame.attrs["changed"] == len(frame) > 0 and frame.attrs["judged"] >= len(first.probes) - 1
    assert set(frame.verdict_now) == {"FORWARDED"} and set(frame.verdict_candidate) == {"DROPPED"}
    deny = frame[frame.drop_reason_desc_candidate == "POLICY_DENY"]
    assert not deny.empty and all(d == ["default/xwing-no-udp-out"] for d in deny.egress_denied_by)
    try:
        lab.policy.apply(CANDIDATE)
        again = run_connectivity_test(lab.name, expect=everything_passes)
        check_prediction(lab, frame, again)
        # the same candidate over the same flows, now in force: nothing would change
        assert lab.policy.replay(CANDIDATE, lab.flows()).empty
    finally:
        lab.policy.delete(all=True)


def test_replay_judges_recorded_http_requests_with_l7_rules(lab):
    try:
        lab.policy.apply(VISIBILITY)   # the proxy sees (and records) every request, allowing all
        after = int(lab.flows(last=1).attrs["seq"])
        first = run_connectivity_test(lab.name, expect=everything_passes)
        assert all(p.ok for p in first.probes), first.format_text()
        frame = lab.policy.replay(L7_CANDIDATE, settled_flows(lab, after=after))
        requests = frame[frame.http_method.notna()]
        assert not requests.empty and set(requests.verdict_candidate) == {"DROPPED"}
        lab.policy.apply(L7_CANDIDATE)
        again = run_connectivity_test(lab.name, expect=everything_passes)
        check_prediction(lab, frame, again)
        # the probes GET /v1/ on the deathstar service: refused with 403 now, as predicted (a backend calling
        # its own service may reach itself, which no policy judges)
        assert not any(p.ok for p in again.probes if p.destination == "default/deathstar" and p.protocol == "TCP"
                       and not p.source.startswith("deathstar-"))
    finally:
        lab.policy.delete(all=True)


def test_suggested_policy_allows_what_was_seen_and_drops_the_rest(lab):
    lab.policy.delete(all=True)
    after = int(lab.flows(last=1).attrs["seq"])
    landing = "curl -s -m 3 -XPOST deathstar.default.svc.cluster.local/v1/request-landing"
    assert lab.exec("tiefighter", landing).stdout.strip() == "Ship landed"
    assert lab.exec("xwing", "curl -s -m 3 -o /dev/null -w %{http_code} http://192.0.2.10/").stdout == "200"
    flows = settled_flows(lab, after=after)
    text = lab.policy.suggest(flows)
    docs = list(yaml.safe_load_all(text))
    # tiefighter looked the service up by name: its egress and kube-dns's ingress admit that lookup
    assert {d["metadata"]["name"] for d in docs} == {"deathstar", "tiefighter", "xwing", "kube-dns"}, text
    assert "10.244." not in text   # pods by labels
    assert lab.policy.replay(text, flows).empty, text   # every forwarded flow it was built from still passes
    cli = subprocess.run([sys.executable, "-m", "workbench", "policy", "suggest", "--lab", lab.name, "-o", "yaml"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and list(yaml.safe_load_all(cli.stdout)), cli.stderr
    try:
        lab.policy.apply(text)
        assert lab.exec("tiefighter", landing).stdout.strip() == "Ship landed"
        assert lab.exec("xwing", "curl -s -m 3 -o /dev/null -w %{http_code} http://192.0.2.10/").stdout == "200"
        # by address: xwing never looked a name up, so its DNS is closed too; the deathstar's ingress is the test
        cluster_ip = lab.services.set_index("name").loc["deathstar", "cluster_ip"]
        never_seen = lab.exec("xwing", f"curl -s -m 1 -XPOST http://{cluster_ip}/v1/request-landing")
        assert never_seen.exit_code != 0 and "Ship landed" not in never_seen.stdout
        # and trace says why: the deathstar's suggested policy does not admit the xwing
        report = lab.policy.trace("xwing", "deathstar", 80)
        assert report["verdict"] == "DROPPED" and report["ingress"]["enforced_by"] == ["default/deathstar"]
    finally:
        lab.policy.delete(all=True)
