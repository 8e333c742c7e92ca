"""DNS visibility, DNS rules and toFQDNs end to end: real lookups from pods through the agent's DNS proxy.

The star-wars lab (with its external hosts api.github.com and support.github.com) plus one short-lived name,
ttl.example.org (TTL 2 s). Each test applies Cilium policies written as Cilium's documentation writes them
(kube-dns selected by its namespace and k8s-app labels) and checks what the pod sees (answers, REFUSED,
connections that work or time out), what the flows say and what the FQDN cache holds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

import workbench as wb
from tests.waiting import wait_exited, wait_until
from workbench.node.topology import pod_netns

SHORT_TTL_HOST = """
apiVersion: workbench.dev/v1
kind: ExternalHost
metadata: {name: ttl-example}
spec: {hostname: ttl.example.org, ip: 198.51.100.30, ports: [80], ttl: 2}
"""

DNS_AND_FQDN = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: xwing-github}
spec:
  endpointSelector: {matchLabels: {class: xwing}}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchPattern: "*.github.com"
        - matchName: ttl.example.org
  - toFQDNs:
    - matchName: api.github.com
    - matchName: ttl.example.org
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"""

# Runs inside a pod: "lookup NAME [tcp]" -> {"rcode": "...", "ips": [...]} through the pod's resolv.conf
# server; "get HOST" -> {"status": N} or {"error": "..."} for an HTTP GET / with a 2 s timeout.
POD_SCRIPT = textwrap.dedent("""
    import json, sys, http.client
    import dns.message, dns.query, dns.rcode, dns.resolver
    what = sys.argv[1]
    if what == "lookup":
        server = dns.resolver.Resolver().nameservers[0]
        query = dns.message.make_query(sys.argv[2], "A")
        ask = dns.query.tcp if len(sys.argv) > 3 and sys.argv[3] == "tcp" else dns.query.udp
        try:
            answer = ask(query, server, timeout=3)
            ips = [r.address for rrset in answer.answer for r in rrset if rrset.rdtype == 1]
            print(json.dumps({"rcode": dns.rcode.to_text(answer.rcode()), "ips": ips}))
        except Exception as err:
            print(json.dumps({"rcode": "TIMEOUT", "error": repr(err)}))
    else:
        conn = http.client.HTTPConnection(sys.argv[2], 80, timeout=2)
        try:
            conn.request("GET", "/")
            print(json.dumps({"status": conn.getresponse().status}))
        except OSError as err:
            print(json.dumps({"error": repr(err)}))
""")


def in_pod(lab, pod: str, *args: str) -> dict:
    run = lab.exec(pod, [sys.executable, "-c", POD_SCRIPT, *args], timeout=30, check=True)
    return json.loads(run.stdout)


def lookup(lab, name: str, pod: str = "xwing", tcp: bool = False) -> dict:
    return in_pod(lab, pod, "lookup", name, *(["tcp"] if tcp else []))


def get(lab, host: str, pod: str = "xwing") -> dict:
    return in_pod(lab, pod, "get", host)


@pytest.fixture(scope="module")
def lab():
    lab = wb.Lab.up([str(wb.example("starwars.yaml")), SHORT_TTL_HOST], name=f"d{uuid.uuid4().hex[:6]}")
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def policy(lab):
    lab.policy.apply(DNS_AND_FQDN)
    try:
        yield
    finally:
        lab.policy.delete(all=True)


def dns_flows(lab, **filters) -> object:
    frame = lab.flows(**filters)
    return frame[frame.dns_query.notna()]


def test_without_policy_lookups_pass_the_datapath_untouched_and_reach_everything(lab):
    assert lookup(lab, "api.github.com") == {"rcode": "NOERROR", "ips": ["192.0.2.20"]}
    assert get(lab, "api.github.com") == {"status": 200}
    assert get(lab, "support.github.com") == {"status": 200}
    assert lab.call("dns.status")["forwarded"] == 0      # no DNS rule: nothing is redirected to the proxy


def test_tofqdns_allows_the_named_host_only_and_a_name_outside_the_dns_rule_is_refused(lab, policy):
    # support.github.com resolves (the DNS rule allows *.github.com) but toFQDNs does not name it
    assert lookup(lab, "support.github.com") == {"rcode": "NOERROR", "ips": ["192.0.2.21"]}
    assert "error" in get(lab, "support.github.com")      # the new agent enforces the same rules
    assert lookup(lab, "api.github.com") == {"rcode": "NOERROR", "ips": ["192.0.2.20"]}
    assert get(lab, "api.github.com") == {"status": 200}
    # over TCP the same rules hold
    assert lookup(lab, "api.github.com", tcp=True) == {"rcode": "NOERROR", "ips": ["192.0.2.20"]}
    assert lookup(lab, "deathstar.default.svc.cluster.local")["rcode"] == "REFUSED"
    assert lookup(lab, "deathstar.default.svc.cluster.local", tcp=True)["rcode"] == "REFUSED"
    # the learnt names: api.github.com has a toFQDNs identity, support.github.com is only cached
    cache = lab.fqdn_cache
    api = cache[cache.name == "api.github.com"].iloc[0]
    support = cache[cache.name == "support.github.com"].iloc[0]
    assert api.ip == "192.0.2.20" and api.identity >= 1 << 24 and 0 < api.expires_in <= 30
    assert support.ip == "192.0.2.21" and support.identity is pd.NA
    # the CLI lists the same cache
    listed = subprocess.run([sys.executable, "-m", "workbench", "fqdn", "cache", "list", "--json", "--lab", lab.name],
                            capture_output=True, text=True, timeout=60, check=True)
    rows = {(r["name"], r["ip"]): r for r in json.loads(listed.stdout)}
    assert rows[("api.github.com", "192.0.2.20")]["identity"] == api.identity
    assert rows[("support.github.com", "192.0.2.21")]["identity"] is None
    table = subprocess.run([sys.executable, "-m", "workbench", "fqdn", "cache", "list", "--lab", lab.name],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "api.github.com" in table and "192.0.2.20" in table
    # tiefighter is not selected: its lookups are not proxied, and it reaches both hosts
    assert get(lab, "support.github.com", pod="tiefighter") == {"status": 200}


def test_dns_flows_and_metrics_match_the_lookups(lab, policy):
    before = {k: v for k, v in lab.call("dns.status").items() if isinstance(v, int)}
    metrics_before = dns_metric_totals(lab)
    lookup(lab, "api.github.com")
    lookup(lab, "x-wing.example.org")                                   # outside the DNS rule: REFUSED
    assert lab.call("dns.status")["forwarded"] == before.get("forwarded", 0) + 1
    rows = wait_until(lambda: (f := dns_flows(lab, pod="xwing")) is not None
                      and {"api.github.com.", "x-wing.example.org."} <= set(f.dns_query) and f,
                      10, "DNS flow rows")
    api = rows[rows.dns_query == "api.github.com."]
    request, response = api[~api.is_reply.astype(bool)].iloc[-1], api[api.is_reply.astype(bool)].iloc[-1]
    assert request.event_type == "l7" and request.verdict == "FORWARDED" and list(request.dns_qtypes) == ["A"]
    assert list(request.egress_allowed_by) == ["default/xwing-github"]
    assert response.dns_rcode == 0 and list(response.dns_ips) == ["192.0.2.20"] and response.dns_ttl == 30
    assert response.src_pod.startswith("kube-dns") and response.dst_pod == "xwing"
    refused = rows[rows.dns_query == "x-wing.example.org."]
    assert refused.verdict.tolist()[-1] == "DROPPED"
    # two queries, one answer passed on (the refused one gets no response flow, as in Hubble)
    after = dns_metric_totals(lab)
    assert after["hubble_dns_queries_total"] - metrics_before["hubble_dns_queries_total"] == 2
    assert after["hubble_dns_responses_total"] - metrics_before["hubble_dns_responses_total"] == 1
    # the whole exposition, DNS families included, as Prometheus' own checker reads it
    promtool = Path(sys.executable).parent / "promtool"
    checked = subprocess.run([str(promtool), "check", "metrics"], input=lab.metrics_text(), capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # an HTTP connection to the learnt address carries its name
    get(lab, "api.github.com")
    to_api = wait_until(lambda: lab.flows(from_pod="xwing", to_ip="192.0.2.20"), 10, "flows to api.github.com")
    assert "api.github.com" in list(to_api.dst_names.iloc[-1])
    assert len(lab.flows(fqdn="api.github.com")) >= 1
    assert set(lab.flows(dns_query=r"x-wing\.").dns_query) == {"x-wing.example.org."}


def dns_metric_totals(lab) -> dict[str, float]:
    """The sum over all label sets of each hubble_dns_* counter, read with the Prometheus text parser."""
    totals = {"hubble_dns_queries_total": 0.0, "hubble_dns_responses_total": 0.0,
              "hubble_dns_response_types_total": 0.0}
    for family in text_string_to_metric_families(lab.metrics_text()):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def test_ttl_expiry_removes_the_address_and_a_new_lookup_restores_it(lab, policy):
    # connections go to the address itself: a lookup by name would learn it again
    assert "error" in get(lab, "198.51.100.30")
    assert lookup(lab, "ttl.example.org")["ips"] == ["198.51.100.30"]
    assert get(lab, "198.51.100.30") == {"status": 200}
    # the 2 s TTL runs out: the address leaves the cache and the ipcache, and new connections are denied
    wait_until(lambda: "198.51.100.30" not in set(lab.fqdn_cache.ip), 10, "expiry of ttl.example.org")
    assert "error" in get(lab, "198.51.100.30")
    assert lookup(lab, "ttl.example.org")["ips"] == ["198.51.100.30"]
    assert get(lab, "198.51.100.30") == {"status": 200}


def test_a_malformed_query_gets_formerr_and_a_flood_is_bounded(lab, policy):
    flood = textwrap.dedent("""
        import socket, struct, sys, dns.resolver
        server = dns.resolver.Resolver().nameservers[0]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(b"\\x12\\x34\\x01\\x00" + b"\\x00" * 8 + b"\\xff\\xff\\xff", (server, 53))
        answer, _ = s.recvfrom(512)
        print(answer[:2].hex(), answer[3] & 0x0F)
        for i in range(int(sys.argv[1])):
            s.sendto(struct.pack("!H", i) + b"\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00"
                     + b"\\x03api\\x06github\\x03com\\x00\\x00\\x01\\x00\\x01", (server, 53))
    """)
    before = lab.call("dns.status")
    agent = int(lab.status()["agent_pid"])
    rss_before = rss_kib(agent)
    run = lab.exec("xwing", [sys.executable, "-c", flood, "20000"], timeout=60, check=True)
    assert run.stdout.split() == ["1234", "1"]                  # same id, rcode FORMERR
    after = wait_until(lambda: (s := lab.call("dns.status"))["inflight"] == 0 and s, 20, "the flood to drain")
    assert after["malformed"] == before.get("malformed", 0) + 1
    handled = after["forwarded"] - before["forwarded"] + after["upstream_errors"] - before["upstream_errors"]
    dropped = (after["dropped_overload"] - before["dropped_overload"]
               + after["dropped_socket_buffer"] - before["dropped_socket_buffer"])
    # the proxy answers what it can and counts what it drops (beyond the in-flight bound, or lost on its full
    # socket buffer); the rest of the 20,000 were lost on the way (the veth's backlog), never seen by the proxy
    assert handled > 0 and dropped > 0 and handled + dropped <= 20000, (handled, dropped, after)
    assert rss_kib(agent) - rss_before < 64 * 1024, "the flood grew the agent by more than 64 MiB"
    assert after["max_inflight"] == 1024
    assert lookup(lab, "api.github.com")["ips"] == ["192.0.2.20"]   # still serving
    errors = dns_flows(lab, verdict="ERROR")
    assert len(errors) >= 1


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_killed_agent_keeps_allowed_connections_and_a_new_one_learns_again(lab, policy):
    assert lookup(lab, "api.github.com")["ips"] == ["192.0.2.20"]
    # a long-lived connection, opened while the name is allowed
    keeper = textwrap.dedent("""
        import socket, sys, time
        s = socket.create_connection(("192.0.2.20", 80), timeout=3)
        print("open", flush=True)
        sys.stdin.readline()
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: api.github.com\\r\\nConnection: close\\r\\n\\r\\n")
        print(s.recv(100).split(b"\\r\\n")[0].decode(), flush=True)
    """)
    proc = subprocess.Popen(["ip", "netns", "exec", pod_netns(lab.name, "xwing"), sys.executable, "-c", keeper],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline().strip() == "open"
        pid = int(lab.status()["agent_pid"])
        os.kill(pid, signal.SIGKILL)
        wait_exited(pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "HTTP/1.1 200 OK"
    finally:
        proc.kill()
        proc.wait()
    again = wb.Lab.up([str(wb.example("starwars.yaml")), SHORT_TTL_HOST], name=lab.name)
    assert "adopted the running lab" in (again.up_outcome.recovered if again.up_outcome else [])
    assert lookup(lab, "api.github.com")["ips"] == ["192.0.2.20"]
    assert get(lab, "api.github.com") == {"status": 200}
    assert "error" in get(lab, "support.github.com")      # the new agent enforces the same rules
