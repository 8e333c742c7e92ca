"""Observe through a real lab: the star-wars demo, rule1, real curl traffic, flows from the agent's store.

The seed's scenario: under rule1 (only org=empire may reach the deathstar on
TCP 80), xwing's landing request is DROPPED with 133 POLICY_DENIED at the
deathstar's ingress, tiefighter's is FORWARDED; `workbench observe` and the
metrics agree with the DataFrame.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

import workbench as wb
from workbench.client import flows as remote
from workbench.observe import render
from workbench.observe.archive import load_parquet
from workbench.observe.metrics import metric_value

RULE1 = wb.example("rule1.yaml").read_text()
URL = "deathstar.default.svc.cluster.local/v1/request-landing"


@pytest.fixture(scope="module")
def lab() -> Iterator[wb.Lab]:
    lab = wb.Lab.up(name=f"o{uuid.uuid4().hex[:6]}")
    try:
        yield lab
    finally:
        lab.down()


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_rule1_flows_from_the_agent(lab, tmp_path):
    lab.policy.apply(RULE1)
    assert lab.exec("tiefighter", f"curl -s -m 3 -XPOST {URL}").stdout.strip() == "Ship landed"
    assert lab.exec("xwing", f"curl -s -m 2 -XPOST {URL}").exit_code != 0

    def xwing_drops():
        df = remote.agent_flows(lab.name, from_pod="xwing", verdict="DROPPED", type="drop")
        return df if len(df) else None

    drops = wait_for(xwing_drops)
    assert drops is not None, "no DROPPED flows from xwing"
    assert (drops.drop_reason == 133).all() and (drops.drop_reason_desc == "POLICY_DENIED").all()
    assert (drops.traffic_direction == "INGRESS").all() and (drops.protocol == "TCP").all()
    assert (drops.dst_port == 80).all() and drops.dst_pod.str.startswith("deathstar").all()
    assert all(any(label.endswith("class=deathstar") for label in labels) for labels in drops.dst_labels)

    tie = remote.agent_flows(lab.name, from_pod="tiefighter", to_port=80, traffic_direction="ingress")
    assert len(tie) >= 1 and set(tie.verdict) == {"FORWARDED"}
    assert (tie.dst_service == "deathstar").any() or tie.dst_pod.str.startswith("deathstar").all()

    # the CLI shows the same flows; json round-trips
    proc = subprocess.run([sys.executable, "-m", "workbench", "observe", "--name", lab.name, "--from-pod", "xwing",
                           "--verdict", "DROPPED", "--type", "drop", "--all", "-o", "json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(render.read_json_lines(proc.stdout)) >= len(drops)
    compact = subprocess.run([sys.executable, "-m", "workbench", "observe", "--name", lab.name, "--from-pod",
                              "xwing", "--type", "policy-verdict", "--traffic-direction", "ingress"],
                             capture_output=True, text=True, timeout=60).stdout
    assert "policy-verdict:none INGRESS DENIED (TCP Flags: SYN)" in compact

    # metrics agree with the DataFrame of the same events
    everything = remote.agent_flows(lab.name)
    m = remote.lab_metrics(lab.name)
    assert metric_value(m, "hubble_flows_processed_total") == everything.attrs["seq"]
    if len(everything) == everything.attrs["seq"]:   # nothing evicted from the ring yet
        assert metric_value(m, "hubble_drop_total", reason="POLICY_DENIED", protocol="TCP") == \
            int(((everything.event_type == "drop") & (everything.drop_reason == 133)
                 & (everything.protocol == "TCP")).sum())

    text = subprocess.run([sys.executable, "-m", "workbench", "metrics", "--name", lab.name],
                          capture_output=True, text=True, timeout=60).stdout
    assert 'hubble_drop_total{protocol="TCP",reason="POLICY_DENIED"}' in text
    status = lab.call("flows.status")
    assert status["reading"] is True and status["seen"] >= len(everything) and status["capacity"] == 4095

    # export through the agent and load back
    out = tmp_path / "flows.parquet"
    proc = subprocess.run([sys.executable, "-m", "workbench", "flows", "export", str(out), "--name", lab.name],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(load_parquet(out)) >= len(everything)

    # the service map and dashboard build from the agent's flows
    fig = remote.lab_service_map(lab.name)
    assert any(t.name == "DROPPED" for t in fig.data)
    pytest.importorskip("anywidget")
    dash = remote.lab_dashboard(lab.name, start=False)
    assert dash.total >= len(everything)
    assert any(sum(t.y) > 0 for t in dash.rate.data if t.name == "DROPPED")


def test_follow_prints_new_flows_as_they_happen(lab):
    """`observe --follow` prints a flow that happens after it started, through its polling loop.

    Ready: with ``--last 1`` the follow loop first prints the newest stored flow, after
    it took the store's sequence number, so every flow after that line is one the loop
    must print. The traffic then goes to a port no flow of this lab has used yet.
    """
    import json
    import queue
    import random
    import threading

    assert lab.exec("tiefighter", f"curl -s -m 3 -XPOST {URL}").exit_code == 0   # an old flow to print first
    assert wait_for(lambda: len(remote.agent_flows(lab.name, from_pod="tiefighter")) or None) is not None
    port = random.randrange(20000, 30000)
    while len(remote.agent_flows(lab.name, port=port)):
        port = random.randrange(20000, 30000)
    deathstar = lab.endpoints.query("app == 'deathstar'").ipv4.iloc[0]

    proc = subprocess.Popen([sys.executable, "-m", "workbench", "observe", "--name", lab.name, "--follow",
                             "--from-pod", "tiefighter", "--last", "1", "-o", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def stderr() -> str:
        return proc.stderr.read() if proc.poll() is not None else "(still running)"

    try:
        try:
            first = json.loads(lines.get(timeout=60))     # the start of a Python process with pandas, on 2 cores
        except queue.Empty:
            pytest.fail(f"observe --follow printed nothing within 60 s; stderr: {stderr()}")
        assert first["src_pod"] == "tiefighter" and first["dst_port"] != port
        # the new flow: tiefighter to the fresh port (refused, or dropped by rule1 at the deathstar's ingress)
        lab.exec("tiefighter", f"curl -s -m 2 http://{deathstar}:{port}/")
        sent = time.monotonic()
        fresh = []
        while not fresh and time.monotonic() - sent < 10:
            try:
                record = json.loads(lines.get(timeout=0.5))
            except queue.Empty:
                continue
            assert record["src_pod"] == "tiefighter", record
            if record["dst_port"] == port:
                fresh.append(record)
        assert fresh, f"no flow to port {port} printed by --follow within 10 s; stderr: {stderr()}"
        assert fresh[0]["dst_ip"] == deathstar and fresh[0]["protocol"] == "TCP"
        assert proc.poll() is None                         # still following
    finally:
        proc.terminate()
        proc.wait(timeout=10)
