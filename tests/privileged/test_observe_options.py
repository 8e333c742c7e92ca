"""`lab up` flow-layer options: flow capacity, the Prometheus endpoint, continuous archive."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import workbench as wb
from tests.waiting import wait_until

LANDING = "curl -s -XPOST deathstar.default.svc.cluster.local/v1/request-landing"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_capacity_metrics_port_and_archive(tmp_path: Path):
    port, archive = free_port(), tmp_path / "archive"
    name = f"o{uuid.uuid4().hex[:6]}"
    proc = subprocess.run([sys.executable, "-m", "workbench", "lab", "up", "--name", name,
                           "--flow-capacity", "1000000", "--metrics-port", str(port), "--archive-dir", str(archive)],
                          capture_output=True, text=True)
    lab = wb.Lab(name)
    try:
        assert proc.returncode == 0, proc.stderr
        assert f"metrics: http://127.0.0.1:{port}/metrics" in proc.stdout
        status = lab.status()
        assert status["flow_capacity"] == 1_000_000
        lab.exec("tiefighter", LANDING, check=True)
        wait_until(lambda: len(lab.flows(from_pod="tiefighter", last=1000)) > 0, 10, "tiefighter's flows")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "hubble_flows_processed_total" in text and "hubble_lost_events_total" in text
    finally:
        lab.down()   # closes the archiver, which writes what it holds
    archived = wb.read_flows(str(archive))
    assert {"tiefighter"} <= set(archived.src_pod.dropna().astype(str))


def test_bad_observe_options_are_refused_before_anything_starts():
    name = f"o{uuid.uuid4().hex[:6]}"
    proc = subprocess.run([sys.executable, "-m", "workbench", "lab", "up", "--name", name, "--metrics-port", "70000"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "--metrics-port 70000 must be between 0 and 65535" in proc.stderr
    assert json.loads(subprocess.run([sys.executable, "-m", "workbench", "lab", "status", "--name", name, "--json"],
                                     capture_output=True, text=True).stdout)["status"] == "down"


def test_lab_down_all_removes_every_lab():
    import pytest

    from workbench.node.inventory import take_inventory
    from workbench.node.state import known_labs

    if known_labs():
        pytest.skip(f"other labs are up on this node ({', '.join(known_labs())}); --all would remove them")
    names = [f"d{uuid.uuid4().hex[:6]}" for _ in range(2)]
    for name in names:
        wb.Lab.up(name=name)
    proc = subprocess.run([sys.executable, "-m", "workbench", "lab", "down", "--all", "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)["removed"]) == set(names)
    assert known_labs() == [] and take_inventory().empty()
