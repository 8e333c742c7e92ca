"""Flow events built in Python, for unit tests of this layer and the ingest benchmark.

They are real ``struct flow_event`` records (EVENT_DTYPE bytes exactly as the
ring buffer delivers them); only their origin differs. Tests of the kernel
path use real traffic instead (tests/privileged).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from workbench.datapath import abi
from workbench.lab.model import Endpoint, Identity, Service, ServicePort
from workbench.observe import events as ev
from workbench.observe.enrich import EnrichmentContext, ip_to_int

XWING = Endpoint(1, "xwing", "default", "10.200.0.11", 258,
                 ("k8s:class=xwing", "k8s:io.kubernetes.pod.namespace=default", "k8s:org=alliance"),
                 {"class": "xwing", "org": "alliance"}, "wb-demo-xwing", "lxc1")
TIEFIGHTER = Endpoint(2, "tiefighter", "default", "10.200.0.12", 259,
                      ("k8s:class=tiefighter", "k8s:io.kubernetes.pod.namespace=default", "k8s:org=empire"),
                      {"class": "tiefighter", "org": "empire"}, "wb-demo-tiefighter", "lxc2")
DEATHSTAR = Endpoint(3, "deathstar-6c94dcc57b-6chpk", "default", "10.200.0.13", 257,
                     ("k8s:class=deathstar", "k8s:io.kubernetes.pod.namespace=default", "k8s:org=empire"),
                     {"class": "deathstar", "org": "empire"}, "wb-demo-deathstar", "lxc3")
DEATHSTAR_SVC = Service("deathstar", "default", "10.96.0.10", [ServicePort(80, 80)],
                        {"class": "deathstar", "org": "empire"}, [DEATHSTAR.pod])
WORLD_IP = "192.0.2.10"
DNS_SERVER_IP = "10.200.0.2"     # the lab's DNS server, as the demo's DNS rows name it
GITHUB_IP = "192.0.2.20"         # what the demo's DNS server answers for api.github.com


def star_wars_context(node_name: str = "wb-demo-node") -> EnrichmentContext:
    """The seed's demo: xwing, tiefighter, a deathstar pod behind the deathstar service."""
    endpoints = [XWING, TIEFIGHTER, DEATHSTAR]
    return EnrichmentContext(node_name, endpoints, [Identity(ep.identity, ep.labels) for ep in endpoints],
                             [DEATHSTAR_SVC])


def events(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """Structured records from dicts with friendly fields.

    Keys: src/dst (IP strings), sport/dport, type ("trace", "drop",
    "policy-verdict", "conn-stats", "conn-end"), verdict (name), drop_reason,
    direction ("INGRESS"/"EGRESS"), proto (number), tcp_flags, match_type
    (number), is_reply, bytes, reply_bytes, src_identity, dst_identity, ktime_ns, policy_cookie.
    """
    types = {name: code for code, name in abi.EVENT_TYPE_NAMES.items()}
    directions = {name: code for code, name in abi.DIRECTION_NAMES.items()}
    out = np.zeros(len(rows), ev.EVENT_DTYPE)
    now = time.monotonic_ns()
    for i, row in enumerate(rows):
        rec = out[i]
        rec["ktime_ns"] = row.get("ktime_ns", now + i)
        rec["saddr"] = int(np.array([ip_to_int(row["src"])], ">u4").view("<u4")[0])
        rec["daddr"] = int(np.array([ip_to_int(row["dst"])], ">u4").view("<u4")[0])
        rec["sport"], rec["dport"] = row.get("sport", 40000), row.get("dport", 80)
        rec["event_type"] = types[row.get("type", "trace")]
        rec["verdict"] = abi.VERDICTS[row.get("verdict", "FORWARDED")]
        rec["drop_reason"] = row.get("drop_reason", 0)
        rec["direction"] = directions[row.get("direction", "INGRESS")]
        rec["proto"] = row.get("proto", 6)
        rec["tcp_flags"] = row.get("tcp_flags", 0x02)
        rec["match_type"] = row.get("match_type", 0)
        rec["is_reply"] = int(row.get("is_reply", False))
        rec["bytes"] = row.get("bytes", 74)
        rec["packets"] = row.get("packets", 1)
        rec["reply_bytes"] = row.get("reply_bytes", 0)
        rec["src_identity"] = row.get("src_identity", 0)
        rec["dst_identity"] = row.get("dst_identity", 0)
        rec["policy_cookie"] = row.get("policy_cookie", abi.POLICY_COOKIE_NONE)
    return out


def random_events(n: int, seed: int = 0) -> np.ndarray:
    """``n`` plausible events among the demo pods and the world, built vectorised (benchmarks)."""
    rng = np.random.default_rng(seed)
    ips = np.array([ip_to_int(x) for x in (XWING.ipv4, TIEFIGHTER.ipv4, DEATHSTAR.ipv4, WORLD_IP)], ">u4")
    out = np.zeros(n, ev.EVENT_DTYPE)
    out["ktime_ns"] = time.monotonic_ns() + np.arange(n, dtype=np.uint64) * 1000
    out["saddr"] = ips[rng.integers(0, 4, n)].view("<u4")
    out["daddr"] = ips[rng.integers(0, 4, n)].view("<u4")
    out["sport"] = rng.integers(32768, 61000, n)
    out["dport"] = rng.choice(np.array([80, 443, 53, 8080], np.uint16), n)
    kinds = rng.choice(np.array([abi.EVENT_TRACE, abi.EVENT_DROP, abi.EVENT_POLICY_VERDICT, abi.EVENT_CONN_END],
                                np.uint8), n, p=[0.6, 0.15, 0.2, 0.05])
    out["event_type"] = kinds
    dropped = (kinds == abi.EVENT_DROP) | ((kinds == abi.EVENT_POLICY_VERDICT) & (rng.random(n) < 0.3))
    out["verdict"] = np.where(dropped, 2, 1)
    out["drop_reason"] = np.where(dropped, rng.choice(np.array([133, 181, 132], np.uint16), n), 0)
    out["direction"] = rng.integers(0, 2, n)
    out["proto"] = rng.choice(np.array([6, 17, 1], np.uint8), n, p=[0.8, 0.15, 0.05])
    out["tcp_flags"] = rng.choice(np.array([0x02, 0x12, 0x10, 0x11, 0x04], np.uint8), n)
    out["match_type"] = np.where(kinds == abi.EVENT_POLICY_VERDICT, rng.integers(0, 5, n), 0)
    out["bytes"] = rng.integers(60, 1500, n)
    out["packets"] = 1
    return out


def dns_names() -> dict[str, tuple[str, ...]]:
    """The IP -> names mapping the demo's DNS answers teach (for ``EnrichmentContext.update(names=...)``)."""
    return {GITHUB_IP: ("api.github.com",), WORLD_IP: ("www.example.org",)}


def dns_exchanges(now_ns: int | None = None) -> list[dict[str, Any]]:
    """DNS exchanges of the demo pods, one of each kind, as keyword arguments of the agent's
    ``DnsExchange`` (``[dns_rows(DnsExchange(**ex)) for ex in dns_exchanges()]``; this layer
    cannot import the agent).

    xwing resolves api.github.com (A, allowed by default/allow-github-dns) and
    www.example.org over TCP (A, an answer with a CNAME); tiefighter gets
    NXDOMAIN for nope.example.org and is refused evil.example.com (AAAA).
    """
    now = time.time_ns() if now_ns is None else now_ns
    server = (DNS_SERVER_IP, 53)
    allow = ("default/allow-github-dns",)
    return [
        dict(client=(XWING.ipv4, 40101), server=server, query="api.github.com.", qtypes=("A",),
             src_identity=XWING.identity, rcode=0, ips=(GITHUB_IP,), ttl=30, policies=allow,
             latency_ns=1_200_000, request_bytes=60, response_bytes=76, time_ns=now),
        dict(client=(XWING.ipv4, 40102), server=server, query="www.example.org.", qtypes=("A",),
             protocol="TCP", src_identity=XWING.identity, rcode=0, ips=(WORLD_IP,), ttl=300,
             cnames=("example.org.",), policies=allow, latency_ns=900_000, request_bytes=62,
             response_bytes=110, time_ns=now + 1000),
        dict(client=(TIEFIGHTER.ipv4, 40201), server=server, query="nope.example.org.", qtypes=("A",),
             src_identity=TIEFIGHTER.identity, rcode=3, ttl=0, latency_ns=700_000,
             request_bytes=63, response_bytes=63, time_ns=now + 2000),
        dict(client=(TIEFIGHTER.ipv4, 40202), server=server, query="evil.example.com.", qtypes=("AAAA",),
             verdict="DROPPED", src_identity=TIEFIGHTER.identity, request_bytes=62, time_ns=now + 3000),
    ]
