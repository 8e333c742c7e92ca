"""DNS proxy cost: queries/s and latency through the agent's DNS proxy vs direct, and toFQDNs update latency.

One lab: a client pod, the lab's kube-dns pod (service 10.96.0.10), and
ExternalHosts under bench.example in the world netns.

Queries/s: a load generator in the client pod (one UDP socket, raw DNS
messages built once with dnspython, ``N`` queries kept in flight, 1 and 32)
asks kube-dns for ``target.bench.example``. "direct" runs without policy (the
query goes straight to kube-dns); "proxy" runs with an egress policy whose DNS
rule (``matchPattern: "*"``) redirects every query of the client to the proxy,
which judges it, forwards it and learns the answer. The modes alternate within
the run so both see the same machine state; ratios are proxy / direct.
kube-dns is a single-threaded Python server: the direct figures are its limit
more than the datapath's.

toFQDNs update latency: with a ``toFQDNs: *.bench.example`` policy, for each of
``hN.bench.example`` (a name not learnt before, so its answer makes the agent
create an identity and compile + write the policy before the pod gets the
answer) the pod times query -> answer -> first successful TCP connect to the
answered address. The same is timed for ``target.bench.example``, learnt and
allowed already (no policy change), between each new name; the update latency
is each new name's time minus the median of those baselines. The same
difference is taken from the proxy's own per-query latency (the DNS flow
rows' ``l7_latency_ns``: upstream answer plus the policy update it waited for).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from bench.figures import figure

CLIENT = "dnsclient"
DOMAIN = "bench.example"
TARGET = f"target.{DOMAIN}"
TARGET_IP = "198.51.100.40"
# hN.bench.example -> 198.51.100.(40 + N): each a name no lookup has learnt before its timed one.
HOST_IPS = {f"h{n}.{DOMAIN}": f"198.51.100.{40 + n}" for n in range(1, 21)}
INFLIGHT = (1, 32)
BUSY_CORE = 0.85     # a single-threaded process using this many cores is the bottleneck
BUSY_MACHINE = 0.9   # all cores together this busy: the machine is
WARMUP = 0.3         # seconds of load before counting (the proxy's first query opens its reply socket)

KUBE_DNS = '{"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}'
DNS_EGRESS = f"""
  - toEndpoints: [{{matchLabels: {KUBE_DNS}}}]
    toPorts:
    - ports: [{{port: "53", protocol: ANY}}]
      rules:
        dns: [{{matchPattern: "*"}}]"""
PROXY_POLICY = f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: dns-bench-proxy}}
spec:
  endpointSelector: {{matchLabels: {{app: {CLIENT}}}}}
  egress:{DNS_EGRESS}
"""
FQDN_POLICY = f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: dns-bench-fqdn}}
spec:
  endpointSelector: {{matchLabels: {{app: {CLIENT}}}}}
  egress:{DNS_EGRESS}
  - toFQDNs: [{{matchPattern: "*.{DOMAIN}"}}]
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
"""


def manifest() -> str:
    """The bench lab: the client pod and the external hosts (kube-dns is part of every lab)."""
    hosts = [(TARGET, TARGET_IP, 300)] + [(name, ip, 30) for name, ip in HOST_IPS.items()]
    docs = [f"""
apiVersion: v1
kind: Pod
metadata: {{name: {CLIENT}, labels: {{app: {CLIENT}}}}}
spec:
  containers: [{{name: client, image: example.org/client}}]
"""]
    docs += [f"""
apiVersion: workbench.dev/v1
kind: ExternalHost
metadata: {{name: {name.split('.')[0]}}}
spec: {{hostname: {name}, ip: {ip}, ports: [80], ttl: {ttl}}}
""" for name, ip, ttl in hosts]
    return "---".join(docs)


# Runs in the client pod: argv name, in-flight queries, seconds, warm-up seconds -> JSON with answers, seconds,
# latencies. The first WARMUP seconds are not counted; queries still
# in flight at the end are left out; one unanswered for LOST_AFTER s is counted lost and replaced.
LOAD = textwrap.dedent("""
    import json, select, socket, struct, sys, time
    import dns.message, dns.resolver
    WARMUP, LOST_AFTER = float(sys.argv[4]), 1.0
    name, inflight, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    server = (dns.resolver.Resolver().nameservers[0], 53)
    query = bytearray(dns.message.make_query(name, "A", use_edns=False).to_wire())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    pending, latencies = {}, []
    answers = lost = bad = 0
    next_id = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    counted_from, end = start + WARMUP, start + WARMUP + seconds
    now = start
    while now < end:
        while len(pending) < inflight:
            next_id = (next_id + 1) & 0xFFFF
            if next_id in pending:
                continue
            struct.pack_into("!H", query, 0, next_id)
            sock.sendto(query, server)
            pending[next_id] = time.perf_counter()
        select.select([sock], [], [], min(0.05, max(0.0, end - now)))
        while True:
            try:
                answer = sock.recv(4096)
            except BlockingIOError:
                break
            now = time.perf_counter()
            sent = pending.pop(struct.unpack_from("!H", answer)[0], None)
            if sent is None:
                continue
            if answer[3] & 0x0F:
                bad += 1
            elif sent >= counted_from and now < end:
                answers += 1
                latencies.append(now - sent)
        now = time.perf_counter()
        for qid in [q for q, sent in pending.items() if now - sent > LOST_AFTER]:
            del pending[qid]
            lost += 1
    client_cores = (time.process_time() - cpu_start) / (time.perf_counter() - start)
    latencies.sort()
    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))] if latencies else float("nan")
    print(json.dumps({"answers": answers, "seconds": end - counted_from, "p50_s": pct(0.5), "p99_s": pct(0.99),
                      "lost": lost, "bad_rcode": bad, "client_cores": client_cores}))
""")

# Runs in the client pod: argv baseline name, then new names. For each name: query -> answer -> first TCP connect
# to its address that succeeds (connect attempts of 0.2 s, retried); the baseline is timed before each new name.
FQDN_TIMING = textwrap.dedent("""
    import json, socket, sys, time
    import dns.message, dns.resolver
    server = (dns.resolver.Resolver().nameservers[0], 53)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3)
    def timed(name):
        query = dns.message.make_query(name, "A", use_edns=False)
        t0 = time.perf_counter()
        sock.sendto(query.to_wire(), server)
        while True:
            answer = dns.message.from_wire(sock.recv(4096))
            if answer.id == query.id:
                break
        answered = time.perf_counter()
        ips = [r.address for rrset in answer.answer for r in rrset if rrset.rdtype == 1]
        attempts = 0
        while True:
            attempts += 1
            try:
                socket.create_connection((ips[0], 80), timeout=0.2).close()
                break
            except OSError:
                if time.perf_counter() - t0 > 5:
                    raise
        return {"name": name, "answer_s": answered - t0, "connected_s": time.perf_counter() - t0,
                "connect_attempts": attempts}
    baseline, names = sys.argv[1], sys.argv[2:]
    timed(baseline)                                 # learnt and allowed before anything is counted
    rows = []
    for name in names:
        rows.append({**timed(baseline), "kind": "baseline"})
        rows.append({**timed(name), "kind": "new"})
    print(json.dumps(rows))
""")


def _in_pod(lab: Any, script: str, *args: str, timeout: float) -> Any:
    out = lab.exec(CLIENT, [sys.executable, "-I", "-c", script, *args], timeout=timeout, check=True)
    return json.loads(out.stdout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs so far, from /proc/stat (idle and iowait are not busy)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    total = sum(values)
    return total - values[3] - values[4], total


def kube_dns_pid(lab: str) -> int:
    """The lab's DNS server process (workbench/node/dnsapp.py, named by its records file in the lab's dir)."""
    marker = f"/run/workbench/{lab}/dns-records.json"
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"dnsapp.py") for a in args) and marker.encode() in args:
                return int(proc.name)
    raise RuntimeError(f"no kube-dns process of lab {lab}")


def _load(lab: Any, inflight: int, seconds: float, pids: dict[str, int]) -> dict[str, Any]:
    """One load run; with the CPU cores kube-dns and the agent (the proxy runs in it) used meanwhile."""
    before = {who: cpu_seconds(pid) for who, pid in pids.items()}
    busy_before, total_before = machine_busy()
    result: dict[str, Any] = _in_pod(lab, LOAD, TARGET, str(inflight), str(seconds), str(WARMUP),
                                     timeout=seconds + 60)
    busy, total = machine_busy()
    # the window includes the client's start (a fraction of a second of one process): a slight overestimate
    result["machine_busy"] = (busy - busy_before) / max(1, total - total_before)
    for who, pid in pids.items():
        result[f"{who}_cores"] = (cpu_seconds(pid) - before[who]) / (result["seconds"] + WARMUP)
    if not result["answers"] or result["bad_rcode"]:
        raise RuntimeError(f"DNS load generator: {result}")
    return result


def measure_throughput(lab: Any, seconds: float, repeats: int) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Direct and proxied runs alternate, so both see the same machine state."""
    pids = {"kube_dns": kube_dns_pid(lab.name), "agent": int(lab.status()["agent_pid"])}
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(repeats):
        for mode in ("direct", "proxy"):
            if mode == "proxy":
                lab.policy.apply(PROXY_POLICY)
            try:
                for inflight in INFLIGHT:
                    samples.setdefault((mode, inflight), []).append(_load(lab, inflight, seconds, pids))
            finally:
                lab.policy.delete(all=True)
    return samples


def throughput_figures(samples: dict[tuple[str, int], list[dict[str, Any]]]) -> dict[str, Any]:
    """qps, p50 and p99 per mode and in-flight count; proxy figures carry the ratio to direct."""
    result: dict[str, Any] = {}
    for inflight in INFLIGHT:
        figs: dict[str, Any] = {}
        for mode in ("direct", "proxy"):
            runs = samples[(mode, inflight)]
            direct = mode == "proxy"     # proxy figures get the direct one (already in figs) as baseline
            figs[f"{mode}_qps"] = figure([r["answers"] / r["seconds"] for r in runs], "queries/s",
                                         baseline=figs["direct_qps"] if direct else None)
            for pct in ("p50", "p99"):
                figs[f"{mode}_{pct}_ms"] = figure([r[f"{pct}_s"] * 1e3 for r in runs], "ms",
                                                  baseline=figs[f"direct_{pct}_ms"] if direct else None,
                                                  higher_is_better=False)
            for who in ("kube_dns", "agent", "client"):
                figs[f"{mode}_{who}_cpu"] = figure([r[f"{who}_cores"] for r in runs], "cores",
                                                   higher_is_better=False)
            figs[f"{mode}_machine_busy"] = figure([r["machine_busy"] for r in runs], "fraction of all cores",
                                                  higher_is_better=False)
        figs["lost_queries"] = sum(r["lost"] for mode in ("direct", "proxy") for r in samples[(mode, inflight)])
        result[f"inflight_{inflight}"] = figs
    return result


def measure_fqdn_update(lab: Any, names: list[str]) -> dict[str, Any]:
    """toFQDNs update latency (ms) from the pod's side and from the proxy's per-query latency."""
    import pandas as pd

    lab.policy.apply(FQDN_POLICY)
    try:
        since = pd.Timestamp.now(tz="UTC")
        rows = _in_pod(lab, FQDN_TIMING, TARGET, *names, timeout=120)
        identities = {r.name: r.identity for r in lab.fqdn_cache.itertuples()}
        proxy_latency = _proxy_latencies(lab, [TARGET, *names], since)
    finally:
        lab.policy.delete(all=True)
    missing = [n for n in [TARGET, *names] if pd.isna(identities.get(n, pd.NA))]
    if missing:
        raise RuntimeError(f"no toFQDNs identity for {missing}")
    base = [r for r in rows if r["kind"] == "baseline"]
    new = [r for r in rows if r["kind"] == "new"]
    base_connected = statistics.median(r["connected_s"] for r in base)
    base_answer = statistics.median(r["answer_s"] for r in base)
    update_ms = [(r["connected_s"] - base_connected) * 1e3 for r in new]
    result: dict[str, Any] = {
        "names": len(new),
        "update_ms": _percentiles(update_ms),
        "new_name_query_to_connect_ms": figure([r["connected_s"] * 1e3 for r in new], "ms",
                                               baseline=figure([r["connected_s"] * 1e3 for r in base], "ms",
                                                               higher_is_better=False),
                                               higher_is_better=False),
        "new_name_answer_ms": figure([r["answer_s"] * 1e3 for r in new], "ms",
                                     baseline=figure([r["answer_s"] * 1e3 for r in base], "ms",
                                                     higher_is_better=False),
                                     higher_is_better=False),
        "baseline_answer_median_ms": base_answer * 1e3,
        "connect_attempts_max": max(r["connect_attempts"] for r in new),
    }
    proxy_base = [v for n, vs in proxy_latency.items() if n == TARGET for v in vs]
    proxy_new = [v for n, vs in proxy_latency.items() if n != TARGET for v in vs[:1]]
    if proxy_base and proxy_new:
        med = statistics.median(proxy_base)
        result["proxy_side_update_ms"] = _percentiles([v - med for v in proxy_new])
    return result


def _proxy_latencies(lab: Any, names: list[str], since: Any) -> dict[str, list[float]]:
    """name -> the proxy's query latencies (ms) in the DNS response rows since ``since``, oldest first."""
    frame = lab.flows(pod=CLIENT).sort_values("time")
    frame = frame[frame.dns_query.notna() & frame.is_reply.astype(bool) & frame.l7_latency_ns.notna()
                  & (frame.time >= since)]
    found: dict[str, list[float]] = {}
    for name in names:
        rows = frame[frame.dns_query == f"{name}."]
        found[name] = [float(v) / 1e6 for v in rows.l7_latency_ns]
    return found


def _percentiles(values_ms: list[float]) -> dict[str, Any]:
    """A figure (median, min, max) plus the 95th percentile of ``values_ms``."""
    ordered = sorted(values_ms)
    result = figure(ordered, "ms", higher_is_better=False)
    result["p95"] = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """Bench section `dns`: queries/s and latency through the DNS proxy vs direct; toFQDNs update latency."""
    import workbench as wb

    seconds, repeats, names = (1.5, 1, 6) if quick else (3.0, 3, 20)
    started = time.monotonic()
    lab = wb.Lab.up(manifest(), name=f"bd{uuid.uuid4().hex[:6]}")
    try:
        samples = measure_throughput(lab, seconds, repeats)
        fqdn = measure_fqdn_update(lab, list(HOST_IPS)[:names])
        status = lab.call("dns.status")
    finally:
        lab.down()
    result: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "seconds_per_sample": seconds,
                              "repeats": repeats, **throughput_figures(samples),
                              "tofqdns": fqdn, "proxy_forwarded": int(status["forwarded"]),
                              "section_seconds": round(time.monotonic() - started, 1)}
    result["notes"] = notes(result)
    return result


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, as the other sections record it."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def notes(result: dict[str, Any]) -> list[str]:
    """What bounds the figures, read from the CPU each process used during the load runs."""
    found = []
    for inflight in INFLIGHT:
        figs = result[f"inflight_{inflight}"]

        def cores(mode: str, who: str, figs: dict[str, Any] = figs) -> float:
            return float(figs[f"{mode}_{who}_cpu"]["median"])

        direct = _bound(cores("direct", "kube_dns"), figs["direct_machine_busy"]["median"],
                        "kube-dns (one Python thread answers UDP)")
        proxied = _bound(cores("proxy", "agent"), figs["proxy_machine_busy"]["median"],
                         "the proxy (one Python event loop in the agent)")
        found.append(f"{inflight} in flight: direct qps {direct}; proxied qps {proxied}. "
                     f"Direct: kube-dns {cores('direct', 'kube_dns'):.2f} cores, client "
                     f"{cores('direct', 'client'):.2f}, machine {figs['direct_machine_busy']['median']:.0%} busy "
                     f"of {result.get('cores') or os.cpu_count()} cores. Through the proxy: agent (proxy) "
                     f"{cores('proxy', 'agent'):.2f} cores, kube-dns {cores('proxy', 'kube_dns'):.2f}, client "
                     f"{cores('proxy', 'client'):.2f}, machine {figs['proxy_machine_busy']['median']:.0%} busy")
    return found


def _bound(server_cores: float, machine_busy: float, server: str) -> str:
    """What limited a load run: the single-threaded ``server`` (a full core), the whole machine, or neither."""
    if server_cores >= BUSY_CORE:
        return f"bounded by {server}"
    if machine_busy >= BUSY_MACHINE:
        return (f"bounded by the machine's CPU, {server} the lab's busiest process ({server_cores:.2f} cores; "
                "other work on the machine took the rest)")
    return "not CPU-bound"

if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
