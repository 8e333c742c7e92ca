"""The lab's DNS service with real lookups from pods: kube-system/kube-dns answers service, pod and
external-host names over UDP and TCP, refuses what it does not know, survives malformed packets, and
every lookup really crosses the datapath to the service (an egress policy without DNS stops it)."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import workbench as wb
from tests.waiting import wait_until
from workbench.client.transport import AgentClient
from workbench.lab.manifests import DEMO_MANIFEST
from workbench.node import state
from workbench.node.inventory import lab_inventory

DNS_IP = "10.96.0.10"
# A host on the second documentation range, on a port of its own, with a TTL of its own.
MIRROR = """
apiVersion: workbench.dev/v1
kind: ExternalHost
metadata: {name: mirror}
spec: {hostname: mirror.example.org, ip: 198.51.100.30, ports: [8080], ttl: 5}
"""

# Runs inside a pod: each query {"name", "type", "tcp"} to the DNS service -> rcode, answers, authority.
QUERY = """
import json, sys
import dns.message, dns.query, dns.rcode
out = []
for q in json.loads(sys.argv[1]):
    query = dns.message.make_query(q["name"], q.get("type", "A"))
    send = dns.query.tcp if q.get("tcp") else dns.query.udp
    reply = send(query, sys.argv[2], timeout=3)
    out.append({"rcode": dns.rcode.to_text(reply.rcode()), "aa": bool(reply.flags & 0x0400),
                "answer": [(rr.name.to_text(), rr.ttl, [r.to_text() for r in rr]) for rr in reply.answer],
                "authority": [rr.rdtype for rr in reply.authority]})
print(json.dumps(out))
"""

# Runs inside a pod: a malformed packet over UDP and over TCP, then the id and rcode of each answer.
MALFORMED = """
import json, socket, sys
import dns.message, dns.rcode
server = sys.argv[1]
# a header that announces one question, then 3 bytes of a label that says 7
packet = bytes.fromhex("beef0100000100000000000007") + b"exa"
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(3)
udp.sendto(packet, (server, 53))
by_udp = dns.message.from_wire(udp.recv(512))
tcp = socket.create_connection((server, 53), timeout=3)
tcp.sendall(len(packet).to_bytes(2, "big") + packet)
size = int.from_bytes(tcp.recv(2), "big")
by_tcp = dns.message.from_wire(tcp.recv(size))
print(json.dumps([[m.id, dns.rcode.to_text(m.rcode())] for m in (by_udp, by_tcp)]))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[wb.Lab]:
    name = f"tadns{uuid.uuid4().hex[:6]}"
    try:
        with wb.Lab.up([DEMO_MANIFEST, MIRROR], name=name) as up:
            yield up
    finally:
        state.teardown(name)
        assert lab_inventory(name).empty()


def pod_ip(lab: wb.Lab, pod: str) -> str:
    return str(lab.endpoints.set_index("pod").loc[pod, "ipv4"])


def cluster_ip(lab: wb.Lab, service: str) -> str:
    return str(lab.services.set_index("name").loc[service, "cluster_ip"])


def ask(lab: wb.Lab, queries: list[dict[str, Any]], pod: str = "xwing", server: str = DNS_IP) -> list[dict[str, Any]]:
    result = lab.exec(pod, [sys.executable, "-c", QUERY, json.dumps(queries), server], check=True)
    return list(json.loads(result.stdout))


def dns_log(lab: wb.Lab) -> str:
    return state.pod_log(lab.name, "kube-dns").read_text()


def test_the_dns_pod_and_service_are_kubernetes_own(lab: wb.Lab) -> None:
    pod = lab.endpoints.set_index("pod").loc["kube-dns"]
    assert pod["namespace"] == "kube-system"
    assert {"k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system"} <= set(pod["labels"])
    [svc] = [s for s in AgentClient(lab.name).call("service.list") if s["name"] == "kube-dns"]
    assert (svc["namespace"], svc["cluster_ip"], svc["backends"]) == ("kube-system", DNS_IP, ["kube-dns"])
    assert sorted((p["port"], p["target_port"], p["protocol"], p["name"]) for p in svc["ports"]) == [
        (53, 53, "TCP", "dns-tcp"), (53, 53, "UDP", "dns")]
    status = lab.status()
    assert status["cluster_dns"] == DNS_IP
    assert [(h["hostname"], h["ip"]) for h in status["external_hosts"]] == [
        ("api.github.com", "192.0.2.20"), ("support.github.com", "192.0.2.21"), ("mirror.example.org", "198.51.100.30")]


def test_pods_get_kubernetes_resolv_conf_and_hosts(lab: wb.Lab) -> None:
    resolv = lab.exec("xwing", "cat /etc/resolv.conf", check=True).stdout
    assert resolv == ("search default.svc.cluster.local svc.cluster.local cluster.local\n"
                      f"nameserver {DNS_IP}\noptions ndots:5\n")
    hosts = [line.split() for line in lab.exec("xwing", "cat /etc/hosts", check=True).stdout.splitlines()
             if line and not line.startswith("#")]
    assert {tuple(h[1:]) for h in hosts} == {("localhost",), ("localhost", "ip6-localhost", "ip6-loopback"),
                                             ("xwing",)}
    assert [pod_ip(lab, "xwing"), "xwing"] in hosts
    kube_dns = lab.exec("kube-dns", "cat /etc/resolv.conf", check=True).stdout
    assert kube_dns.startswith("search kube-system.svc.cluster.local svc.cluster.local cluster.local\n")


@pytest.mark.parametrize("name", ["deathstar", "deathstar.default", "deathstar.default.svc.cluster.local"])
def test_glibc_resolves_service_names_by_asking_the_dns_service(lab: wb.Lab, name: str) -> None:
    result = lab.exec("xwing", ["getent", "hosts", name])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split()[0] == cluster_ip(lab, "deathstar")
    # the server saw xwing's own query for the name (after the search path)
    assert f"{pod_ip(lab, 'xwing')}:" in dns_log(lab)
    assert any(line.startswith(f"kube-dns {pod_ip(lab, 'xwing')}:") and
               " A deathstar.default.svc.cluster.local. NOERROR" in line for line in dns_log(lab).splitlines())


def test_curl_reaches_the_service_by_short_and_full_name(lab: wb.Lab) -> None:
    for url in ("deathstar/v1/request-landing", "deathstar.default.svc.cluster.local/v1/request-landing"):
        assert lab.exec("xwing", ["curl", "-s", "-m", "5", "-XPOST", url], check=True).stdout == "Ship landed\n"


def test_names_in_another_namespace_need_their_namespace(lab: wb.Lab) -> None:
    assert lab.exec("xwing", "getent hosts kube-dns").exit_code == 2          # not in default: NXDOMAIN
    answer = lab.exec("xwing", "getent hosts kube-dns.kube-system", check=True).stdout
    assert answer.split()[0] == DNS_IP


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dnspython_queries_over_udp_and_tcp(lab: wb.Lab, tcp: bool) -> None:
    xwing = pod_ip(lab, "xwing")
    pod_name = f"{xwing.replace('.', '-')}.default.pod.cluster.local"
    queries = [
        {"name": "deathstar.default.svc.cluster.local"},
        {"name": "kube-dns.kube-system.svc.cluster.local"},
        {"name": pod_name},
        {"name": "deathstar.default.svc.cluster.local", "type": "AAAA"},
        {"name": "default.svc.cluster.local"},
        {"name": "nosuch.default.svc.cluster.local"},
        {"name": "api.github.com"},
        {"name": "mirror.example.org"},
        {"name": "api.github.com", "type": "MX"},
        {"name": "www.example.com"},
    ]
    replies = ask(lab, [{**q, "tcp": tcp} for q in queries])
    summary = [(r["rcode"], [(ttl, ips) for _, ttl, ips in r["answer"]]) for r in replies]
    assert summary == [
        ("NOERROR", [(30, [cluster_ip(lab, "deathstar")])]),
        ("NOERROR", [(30, [DNS_IP])]),
        ("NOERROR", [(30, [xwing])]),
        ("NOERROR", []),                          # known name, no AAAA: NODATA
        ("NOERROR", []),                          # a name with names below it
        ("NXDOMAIN", []),
        ("NOERROR", [(30, ["192.0.2.20"])]),
        ("NOERROR", [(5, ["198.51.100.30"])]),    # the host's own TTL
        ("NOERROR", []),
        ("NXDOMAIN", []),                         # never forwarded, never a real address
    ]
    assert all(r["aa"] for r in replies[:6])     # authoritative for cluster.local, with its SOA when negative
    soa = 6
    assert [r["authority"] for r in replies[3:6]] == [[soa], [soa], [soa]]
    assert replies[9]["authority"] == []


def test_a_malformed_packet_gets_formerr_and_the_server_keeps_answering(lab: wb.Lab) -> None:
    pids = (state.lab_cgroup(lab.name) / "kube-dns" / "cgroup.procs").read_text().split()
    result = lab.exec("tiefighter", [sys.executable, "-c", MALFORMED, DNS_IP], check=True)
    assert json.loads(result.stdout) == [[0xBEEF, "FORMERR"], [0xBEEF, "FORMERR"]]
    assert ask(lab, [{"name": "deathstar.default.svc.cluster.local"}], pod="tiefighter")[0]["rcode"] == "NOERROR"
    assert ask(lab, [{"name": "deathstar.default.svc.cluster.local", "tcp": True}])[0]["rcode"] == "NOERROR"
    assert (state.lab_cgroup(lab.name) / "kube-dns" / "cgroup.procs").read_text().split() == pids


def test_external_hosts_resolve_and_answer_http_from_the_world(lab: wb.Lab) -> None:
    xwing = pod_ip(lab, "xwing")
    assert lab.exec("xwing", "getent hosts api.github.com", check=True).stdout.split()[0] == "192.0.2.20"
    for url, hostname in (("http://api.github.com/", "api.github.com"),
                          ("http://support.github.com/status", "support.github.com"),
                          ("http://mirror.example.org:8080/", "mirror.example.org")):
        result = lab.exec("xwing", ["curl", "-s", "-m", "5", "-w", "\\n%{http_code}", url], check=True)
        body, code = result.stdout.rsplit("\n", 1)
        assert code == "200", result.stdout
        answer = json.loads(body)
        assert answer["hostname"] == hostname and answer["pod"] == "world"
        assert answer["client"].startswith(f"{xwing}:")
    # 198.51.100.0/24 is routed for the pods because a host is there, through the lab's gateway only
    route = lab.exec("xwing", "ip route get 198.51.100.30", check=True).stdout
    assert "via 169.254.1.1" in route
    assert lab.exec("xwing", "ip route get 203.0.113.1").exit_code != 0


def test_external_hosts_stay_world_in_the_ipcache(lab: wb.Lab) -> None:
    from workbench.datapath import build

    maps = build.compile_object("maps_only.bpf.c", lab.name)
    try:
        for address in ("192.0.2.20", "192.0.2.21", "198.51.100.30"):
            assert build.ipcache_lookup(maps, address) == 2, address
    finally:
        maps.cleanup()
    identities = lab.identities
    assert not any("api.github.com" in str(labels) for labels in identities["labels"])


def test_the_server_reads_the_records_file_again_when_it_changes(lab: wb.Lab) -> None:
    """What a lab that adds pods while it runs relies on: new names resolve without a restart."""
    path = state.state_dir(lab.name) / "dns-records.json"
    original = path.read_text()
    data = json.loads(original)
    data["records"]["added.default.svc.cluster.local"] = [{"ip": "10.96.0.99", "ttl": 7}]
    try:
        assert ask(lab, [{"name": "added.default.svc.cluster.local"}])[0]["rcode"] == "NXDOMAIN"
        _replace(path, json.dumps(data))
        reply = ask(lab, [{"name": "added.default.svc.cluster.local"}])[0]
        assert (reply["rcode"], reply["answer"][0][1:]) == ("NOERROR", [7, ["10.96.0.99"]])
    finally:
        _replace(path, original)
    assert ask(lab, [{"name": "added.default.svc.cluster.local"}])[0]["rcode"] == "NXDOMAIN"


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".test")
    tmp.write_text(text)
    os.replace(tmp, path)


DENY_DNS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: xwing-only-deathstar}
spec:
  endpointSelector: {matchLabels: {class: xwing}}
  egress:
  - toEndpoints: [{matchLabels: {class: deathstar}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""

ALLOW_DNS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: xwing-dns}
spec:
  endpointSelector: {matchLabels: {class: xwing}}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s-app": kube-dns}
    toPorts: [{ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]}]
"""


def test_lookups_cross_the_datapath_and_obey_egress_policy(lab: wb.Lab) -> None:
    """Once xwing is selected by an egress policy, its DNS is denied unless a rule allows kube-dns (Cilium's
    semantics): the lookups are real packets to the service, not a file read."""
    deathstar = cluster_ip(lab, "deathstar")
    try:
        lab.policy.apply(DENY_DNS)
        assert lab.exec("xwing", "getent hosts deathstar.default.svc.cluster.local").exit_code != 0
        landed = lab.exec("xwing", ["curl", "-s", "-m", "5", "-XPOST", f"http://{deathstar}/v1/request-landing"])
        assert landed.stdout == "Ship landed\n"                      # by address it still works
        wait_until(lambda: (lambda rows: rows[rows.dst_port == 53])(lab.flows(from_pod="xwing", verdict="DROPPED")),
                   10, "a dropped DNS flow from xwing")
        lab.policy.apply(ALLOW_DNS)
        answer = lab.exec("xwing", "getent hosts deathstar", check=True).stdout
        assert answer.split()[0] == deathstar
        assert lab.exec("xwing", ["curl", "-s", "-m", "5", "-XPOST", "deathstar/v1/request-landing"],
                        check=True).stdout == "Ship landed\n"
    finally:
        lab.policy.delete(all=True)
