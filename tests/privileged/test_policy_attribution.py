"""Policy attribution with real traffic: which policy allowed or denied each flow (Hubble's *_allowed_by/*_denied_by).

The star-wars lab under rule1: the deathstar's ingress is default-deny, so
xwing's SYN is a default-deny drop (no entry matched: match type none, no
policy named) while tiefighter's is FORWARDED, allowed by default/rule1. An
ingressDeny from xwing names its policy in ingress_denied_by (POLICY_DENY).
With rule1's L7 version, an allowed request names rule1 and a denied one
(PUT /v1/exhaust-port) names nothing and carries drop reason 133. The cookie
table lives in the lab's state dir: the pinned policy map's cookies resolve
through it before and after the agent is killed and a new one adopts the lab.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pandas as pd
import pytest

import workbench as wb
from tests.waiting import wait_exited
from workbench.datapath import abi, build
from workbench.datapath.cookies import COOKIE_FILE
from workbench.node import state
from workbench.observe import render, schema

RULE1 = wb.example("rule1.yaml").read_text()
RULE1_L7 = wb.example("rule1-l7.yaml").read_text()
NO_XWING = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: no-xwing
spec:
  endpointSelector:
    matchLabels: {class: deathstar}
  ingressDeny:
  - fromEndpoints:
    - matchLabels: {class: xwing}
"""
URL = "deathstar.default.svc.cluster.local/v1/request-landing"
DEATHSTAR = "http://deathstar.default.svc.cluster.local"
EMPTY = {c: [] for c in schema.POLICY_COLUMNS}


@pytest.fixture(scope="module")
def lab() -> Iterator[wb.Lab]:
    lab = wb.Lab.up(name=f"attr{uuid.uuid4().hex[:6]}")
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def clean(lab: wb.Lab) -> Iterator[wb.Lab]:
    try:
        yield lab
    finally:
        lab.policy.delete(all=True)


def policy_lists(row: pd.Series) -> dict[str, list[str]]:
    return {c: list(row[c]) for c in schema.POLICY_COLUMNS}


def wait_rows(lab: wb.Lab, count: int = 1, **filters) -> pd.DataFrame:
    deadline = time.monotonic() + 5
    while True:
        frame = lab.flows(**filters)
        if len(frame) >= count or time.monotonic() > deadline:
            return frame
        time.sleep(0.1)


def since_now() -> str:
    return pd.Timestamp.now(tz="UTC").isoformat()


def observe(lab: wb.Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workbench", "observe", "--name", lab.name, *args],
                          capture_output=True, text=True, timeout=60)


def test_rule1_allowed_by_for_tiefighter_and_default_deny_names_nothing(clean: wb.Lab) -> None:
    lab = clean
    lab.policy.apply(RULE1)
    start = since_now()
    assert lab.exec("tiefighter", f"curl -s -m 3 -XPOST {URL}").stdout.strip() == "Ship landed"
    assert lab.exec("xwing", f"curl -s -m 1 -XPOST {URL}").exit_code != 0

    # to the deathstars: tiefighter's lookup of the service name reached kube-dns, which no policy selects
    tie = wait_rows(lab, from_pod="tiefighter", to_pod="deathstar", type="policy-verdict", traffic_direction="ingress",
                    since=start)
    assert len(tie) >= 1 and set(tie.verdict) == {"FORWARDED"}
    for _, row in tie.iterrows():
        assert policy_lists(row) == {**EMPTY, "ingress_allowed_by": ["default/rule1"]}
    # tiefighter's own egress: no policy selects it, so nothing allowed it but the default
    egress = wait_rows(lab, from_pod="tiefighter", type="policy-verdict", traffic_direction="egress", since=start)
    assert len(egress) >= 1 and all(policy_lists(row) == EMPTY for _, row in egress.iterrows())

    xwing = wait_rows(lab, from_pod="xwing", verdict="DROPPED", traffic_direction="ingress", since=start)
    assert {"policy-verdict", "drop"} <= set(xwing.event_type.astype(str))
    assert (xwing.drop_reason == abi.DROP_POLICY_DENIED).all()
    assert set(xwing[xwing.event_type == "policy-verdict"].policy_match_type.astype(str)) == {"none"}
    assert all(policy_lists(row) == EMPTY for _, row in xwing.iterrows())

    decided = lab.flows(policy="rule1", since=start)
    assert len(decided) >= 1 and set(decided.src_pod.astype(str)) == {"tiefighter"}
    assert len(lab.flows(policy="default/rule1", since=start)) == len(decided)

    compact = observe(lab, "--policy", "rule1", "--all")
    assert compact.returncode == 0, compact.stderr
    lines = compact.stdout.splitlines()
    assert lines and all(line.endswith("(allowed by default/rule1)") for line in lines)
    assert any("policy-verdict:L3-L4 INGRESS ALLOWED" in line for line in lines)
    as_json = observe(lab, "--policy", "default/rule1", "--all", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert all(r == ["default/rule1"] for r in render.read_json_lines(as_json.stdout).ingress_allowed_by)
    unknown = observe(lab, "--policy", "rule9")
    assert unknown.returncode != 0 and "unknown policy 'rule9'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


def test_an_ingress_deny_names_its_policy_in_ingress_denied_by(clean: wb.Lab) -> None:
    lab = clean
    lab.policy.apply(RULE1 + "\n---\n" + NO_XWING)
    start = since_now()
    assert lab.exec("xwing", f"curl -s -m 1 -XPOST {URL}").exit_code != 0
    denied = wait_rows(lab, 2, from_pod="xwing", verdict="DROPPED", traffic_direction="ingress", since=start)
    assert {"policy-verdict", "drop"} <= set(denied.event_type.astype(str))
    assert (denied.drop_reason == abi.DROP_POLICY_DENY).all()
    for _, row in denied.iterrows():
        assert policy_lists(row) == {**EMPTY, "ingress_denied_by": ["default/no-xwing"]}
    compact = observe(lab, "--policy", "no-xwing", "--all")
    assert compact.returncode == 0 and compact.stdout.splitlines()
    assert all(line.endswith("(denied by default/no-xwing)") for line in compact.stdout.splitlines())
    assert len(lab.flows(policy="no-xwing", verdict="FORWARDED", since=start)) == 0


def test_l7_allowed_request_names_the_policy_denied_request_names_none_with_133(clean: wb.Lab) -> None:
    lab = clean
    lab.policy.apply(RULE1_L7)
    start = since_now()
    landed = lab.exec("tiefighter", ["curl", "-s", "-m", "3", "-X", "POST", f"{DEATHSTAR}/v1/request-landing"])
    assert landed.stdout == "Ship landed\n"
    refused = lab.exec("tiefighter", ["curl", "-s", "-m", "3", "-X", "PUT", f"{DEATHSTAR}/v1/exhaust-port"])
    assert refused.stdout.strip() == "Access denied"

    rows = wait_rows(lab, 3, type="l7", since=start)
    allowed, denied = rows[rows.verdict == "FORWARDED"], rows[rows.verdict == "DROPPED"]
    assert len(allowed) == 2 and len(denied) == 1    # request + response; the 403
    for _, row in allowed.iterrows():
        assert policy_lists(row) == {**EMPTY, "ingress_allowed_by": ["default/rule1"]}
    row = denied.iloc[0]
    assert policy_lists(row) == EMPTY and row.drop_reason == abi.DROP_POLICY_DENIED and row.http_code == 403
    # the proxy's upstream connection is judged at the deathstar's ingress by the L7 entry of rule1
    upstream = wait_rows(lab, type="policy-verdict", to_pod="deathstar", traffic_direction="ingress", since=start)
    assert len(upstream) >= 1
    assert all(policy_lists(r) == {**EMPTY, "ingress_allowed_by": ["default/rule1"]} for _, r in upstream.iterrows())
    assert set(lab.flows(policy="rule1", type="l7", since=start).verdict.astype(str)) == {"FORWARDED"}


def pinned_cookies(lab: str) -> set[int]:
    """Every policy_value.cookie in the lab's pinned policy map, read with bpftool (no agent involved)."""
    out = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(build.pin_dir(lab) / "policy")],
                         capture_output=True, text=True, check=True).stdout
    cookies = set()
    for item in json.loads(out):
        value = bytes(int(b, 16) for b in item["value"])
        offset = abi.POLICY_VALUE_DTYPE.fields["cookie"][1]
        cookies.add(struct.unpack_from("<I", value, offset)[0])
    return cookies


def test_the_cookie_table_outlives_the_agent(clean: wb.Lab) -> None:
    lab = clean
    lab.policy.apply(RULE1)                        # its cookies first ...
    lab.policy.apply(RULE1 + "\n---\n" + NO_XWING)  # ... then new ones: renumbering would show
    table = state.state_dir(lab.name) / COOKIE_FILE
    rows = json.loads(table.read_text())
    assert os.stat(table).st_mode & 0o777 == 0o600
    named = {tuple(rows[c]) for c in pinned_cookies(lab.name)}
    assert named == {("default/rule1",), ("default/no-xwing",)}

    agent = int(lab.status()["agent_pid"])
    os.kill(agent, signal.SIGKILL)
    wait_exited(agent)
    assert {tuple(rows[c]) for c in pinned_cookies(lab.name)} == named   # the datapath kept its cookies
    again = wb.Lab.up(name=lab.name)               # a new agent adopts the lab and rewrites the policy
    assert json.loads(table.read_text())[:len(rows)] == rows   # the new agent kept every old cookie
    assert {tuple(json.loads(table.read_text())[c]) for c in pinned_cookies(lab.name)} == named
    start = since_now()
    assert again.exec("xwing", f"curl -s -m 1 -XPOST {URL}").exit_code != 0
    denied = wait_rows(again, from_pod="xwing", type="policy-verdict", verdict="DROPPED", since=start)
    assert len(denied) >= 1 and list(denied.iloc[0].ingress_denied_by) == ["default/no-xwing"]
