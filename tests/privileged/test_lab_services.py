"""Services beyond the demo, through the Python API: UDP and TCP echo behind ClusterIPs, named
target ports, namespaces, a custom pod CIDR, and identities kept across an agent restart."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator

import pytest

import workbench as wb
from workbench.node import state
from workbench.node.inventory import lab_inventory

ECHO_LAB = """
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: blue}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: example.org/echo:1
        ports:
        - {containerPort: 9000, name: http}
        - {containerPort: 5353, protocol: UDP, name: dns}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  containers: [{name: c, image: example.org/client}]
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, labels: {app: client}}
spec:
  containers: [{name: c, image: example.org/client}]
"""

UDP_CLIENT = """
import json, socket
out = []
for _ in range(30):                          # a new socket each time: a new backend pick
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.sendto(b"hello", ("echo.shop.svc.cluster.local", 53))
    data, peer = s.recvfrom(500)
    out.append({"peer": list(peer), "reply": data.decode()})
    s.close()
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # connected UDP goes through connect4
c.settimeout(3)
c.connect(("echo.shop", 53))
c.send(b"connected")
data = c.recv(500).decode()
print(json.dumps({"unconnected": out, "connected": data, "connected_peer": list(c.getpeername())}))
"""


def _echo_lab() -> Iterator[wb.Lab]:
    name = f"t{uuid.uuid4().hex[:7]}"
    try:
        with wb.Lab.up(ECHO_LAB, name=name, pod_cidr="10.77.0.0/16", service_cidr="10.78.0.0/16") as lab:
            yield lab
    finally:
        state.teardown(name)
        assert lab_inventory(name).empty()


@pytest.fixture(scope="module")
def echo_lab() -> Iterator[wb.Lab]:
    """Shared by the tests that leave the lab as they found it (same pods, an agent up)."""
    yield from _echo_lab()


@pytest.fixture
def own_echo_lab() -> Iterator[wb.Lab]:
    """A lab of this test's own, for a test that changes the pods: the shared one stays as declared."""
    yield from _echo_lab()


def test_pods_use_the_configured_cidrs(echo_lab: wb.Lab) -> None:
    frame = echo_lab.endpoints
    assert len(frame) == 5 and all(ip.startswith("10.77.") for ip in frame["ipv4"])   # 4 pods and kube-dns
    assert echo_lab.services.iloc[0]["cluster_ip"].startswith("10.78.")
    # the lab's DNS service takes the service CIDR's .10, and pods ask it
    dns = echo_lab.services.set_index("name").loc["kube-dns"]
    assert (dns["namespace"], dns["cluster_ip"]) == ("kube-system", "10.78.0.10")
    assert "nameserver 10.78.0.10\n" in echo_lab.exec("client", "cat /etc/resolv.conf", check=True).stdout


def test_namespace_labels_are_part_of_identities(echo_lab: wb.Lab) -> None:
    frame = echo_lab.endpoints.set_index("pod")
    assert "k8s:io.cilium.k8s.namespace.labels.team=blue" in frame.loc["client", "labels"]
    # same pod labels, different namespace: a different identity
    assert frame.loc["client", "identity"] != frame.loc["outsider", "identity"]


def test_udp_through_a_service_reaches_both_replicas_and_shows_the_cluster_ip(echo_lab: wb.Lab) -> None:
    svc = echo_lab.services.iloc[0]
    result = echo_lab.exec("client", [sys.executable, "-c", UDP_CLIENT], check=True)
    answer = json.loads(result.stdout)
    replies = answer["unconnected"]
    assert all(r["peer"] == [svc["cluster_ip"], 53] for r in replies)     # recvmsg4 reverse translation
    pods = {r["reply"].split("pod=")[1].split(":")[0] for r in replies}
    replicas = {p for p in echo_lab.endpoints["pod"] if p.startswith("echo-")}
    assert pods == replicas
    assert answer["connected"].endswith("connected") and answer["connected_peer"] == [svc["cluster_ip"], 53]


def test_tcp_named_target_port_and_client_address(echo_lab: wb.Lab) -> None:
    client_ip = echo_lab.endpoints.set_index("pod").loc["client", "ipv4"]
    result = echo_lab.exec("client", "curl -s -m 3 http://echo/some/path", check=True)
    answer = json.loads(result.stdout)
    assert answer["path"] == "/some/path" and answer["client"].startswith(f"{client_ip}:")
    assert answer["pod"].startswith("echo-")


def test_short_service_name_resolves_only_in_its_namespace(echo_lab: wb.Lab) -> None:
    assert echo_lab.exec("client", "getent hosts echo").exit_code == 0
    assert echo_lab.exec("outsider", "getent hosts echo").exit_code != 0
    assert echo_lab.exec("outsider", "getent hosts echo.shop.svc.cluster.local").exit_code == 0


def test_lab_up_again_connects_and_warns(echo_lab: wb.Lab) -> None:
    with pytest.warns(UserWarning, match=f"lab {echo_lab.name} was already up"):
        again = wb.Lab.up(ECHO_LAB, name=echo_lab.name)
    assert any("already up" in w for w in again.warnings)


def _app_pids(lab: wb.Lab) -> dict[str, str]:
    cg = state.lab_cgroup(lab.name)
    return {pod: (cg / pod / "cgroup.procs").read_text().split()[0] for pod in lab.endpoints["pod"]
            if pod.startswith("echo-")}


def test_a_new_agent_adopts_the_running_lab(echo_lab: wb.Lab) -> None:
    """SIGKILL the agent, `lab up` again: pods, apps and identities stay, the API answers again."""
    import os
    import signal

    before = dict(zip(echo_lab.endpoints["pod"], echo_lab.endpoints["identity"], strict=True))
    pids = _app_pids(echo_lab)
    os.kill(int(state.pid_path(echo_lab.name).read_text()), signal.SIGKILL)
    assert echo_lab.status()["status"] == "broken"
    # the datapath does not need the agent: service traffic keeps flowing
    assert echo_lab.exec("client", "curl -s -m 3 http://echo/").exit_code == 0
    lab = wb.Lab.up(ECHO_LAB, name=echo_lab.name, pod_cidr="10.77.0.0/16", service_cidr="10.78.0.0/16")
    assert lab.status()["adopted"] is True
    assert dict(zip(lab.endpoints["pod"], lab.endpoints["identity"], strict=True)) == before
    assert _app_pids(lab) == pids                       # the same processes, never restarted
    assert lab.exec("client", "curl -s -m 3 http://echo/", check=True).stdout.startswith("{")


def test_changed_manifests_after_a_crash_rebuild_with_the_same_identities(own_echo_lab: wb.Lab) -> None:
    import os
    import signal

    before = dict(zip(own_echo_lab.endpoints["pod"], own_echo_lab.endpoints["identity"], strict=True))
    os.kill(int(state.pid_path(own_echo_lab.name).read_text()), signal.SIGKILL)
    extra = ECHO_LAB + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: extra, labels: {app: new}}\n" \
                       "spec: {containers: [{name: c, image: example.org/client}]}\n"
    lab = wb.Lab.up(extra, name=own_echo_lab.name, pod_cidr="10.77.0.0/16", service_cidr="10.78.0.0/16")
    assert lab.status()["adopted"] is False
    after = dict(zip(lab.endpoints["pod"], lab.endpoints["identity"], strict=True))
    assert {pod: after[pod] for pod in before} == before
    assert after["extra"] not in before.values()
    assert lab.exec("client", "curl -s -m 3 http://echo/", check=True).stdout.startswith("{")


def test_python_api_works_inside_a_running_event_loop() -> None:
    """Notebook kernels run an asyncio loop; Lab.up/exec/down must not trip pyroute2 there."""
    import asyncio

    name = f"t{uuid.uuid4().hex[:7]}"

    async def notebook_cell() -> str:
        lab = wb.Lab.up(name=name)
        try:
            return lab.exec("xwing", "curl -s -XPOST deathstar.default.svc.cluster.local/v1/request-landing").stdout
        finally:
            lab.down()

    try:
        assert asyncio.run(notebook_cell()) == "Ship landed\n"
        assert lab_inventory(name).empty()
    finally:
        state.teardown(name)
