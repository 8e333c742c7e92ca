"""When the agent (and with it the L7 proxy) dies, L7-redirected traffic stops: it never bypasses the rules.

The datapath keeps redirecting connections that an L7 rule covers; with no
proxy listening the redirect finds no socket and the packet is dropped
(SOCKET_LOOKUP_FAILED). Neither the denied nor the allowed request reaches the
deathstar, whose own request log is the witness. A new agent adopts the lab
and the rules are enforced again. This module kills its agent, so it has a
lab of its own.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import workbench as wb

from .conftest import BackendLog, lab_name

DEATHSTAR = "deathstar.default.svc.cluster.local"
SOCKET_LOOKUP_FAILED = 178


@pytest.fixture(scope="module")
def lab():
    lab = wb.Lab.up(name=lab_name("secfc"))
    try:
        lab.policy.apply(wb.example("rule1-l7.yaml"))
        yield lab
    finally:
        lab.down()


def curl(lab, pod: str, method: str, path: str, timeout: int = 2):
    return lab.exec(pod, ["curl", "-s", "-m", str(timeout), "-X", method, f"http://{DEATHSTAR}{path}"])


def test_a_dead_agent_lets_nothing_through_and_a_new_one_enforces_again(lab):
    log = BackendLog(lab)
    assert curl(lab, "tiefighter", "PUT", "/v1/exhaust-port").stdout.strip() == "Access denied"
    assert curl(lab, "tiefighter", "POST", "/v1/request-landing").stdout == "Ship landed\n"
    assert BackendLog.executed(log.new_lines()) == [("POST", "/v1/request-landing")]

    pid = int(lab.status()["agent_pid"])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    # no proxy: both the denied and the allowed request time out, none is sent on unjudged
    for method, path in [("PUT", "/v1/exhaust-port"), ("POST", "/v1/request-landing")]:
        run = curl(lab, "tiefighter", method, path)
        assert run.exit_code == 28 and run.stdout == "", (method, path, run)
    time.sleep(0.3)
    assert BackendLog.requests(log.new_lines()) == []          # the deathstar saw nothing at all

    again = wb.Lab.up(name=lab.name)                          # a new agent adopts the running lab
    assert again.status()["adopted"] is True
    assert curl(again, "tiefighter", "PUT", "/v1/exhaust-port").stdout.strip() == "Access denied"
    assert curl(again, "tiefighter", "POST", "/v1/request-landing").stdout == "Ship landed\n"
    assert BackendLog.executed(log.new_lines()) == [("POST", "/v1/request-landing")]
    drops = {row["drop_reason"] for row in again.call("datapath.metrics") if row["verdict"] == "DROPPED"}
    assert SOCKET_LOOKUP_FAILED in drops
