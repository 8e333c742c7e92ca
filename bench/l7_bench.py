"""L7 proxy cost: HTTP requests/s and p99 latency through the proxy vs direct to the backend.

One star-wars lab. tiefighter runs a load generator (keep-alive HTTP/1.1
clients, one connection per client, POST /v1/request-landing) against a
backend in one deathstar pod, with 1 and with 32 concurrent clients. The
backend is the bench's own threaded HTTP server on port 8080 in that pod's
netns, with TCP_NODELAY: the built-in deathstar app writes head and body
separately without it, so Nagle plus the client's delayed ACK would stall
every direct answer ~40 ms and the bench would measure that stall instead of
the proxy. "direct" runs without
policy; "proxy" runs with the seed's L7 rule (every request is parsed and
checked by the agent's proxy and forwarded over its upstream connection).
The two modes alternate within the same run so both see the same machine
state; figures are medians over the repeats with ratios proxy / direct.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from typing import Any

from bench.figures import figure

L7_POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-bench}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: POST, path: /v1/request-landing}]
"""
BACKEND_PORT = 8080

BACKEND = textwrap.dedent("""
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"Ship landed\\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
""")

LOAD = textwrap.dedent("""
    import http.client, json, sys, threading, time
    host, port, clients, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    latencies, errors = [], [0]
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    def client():
        conn = http.client.HTTPConnection(host, port, timeout=10)
        mine = []
        start_gate.wait()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/request-landing")
                body = conn.getresponse().read()
                if body != b"Ship landed\\n":
                    raise ValueError(body)
            except Exception:
                errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=10)
                continue
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    print(json.dumps({"requests": len(latencies), "seconds": elapsed, "p99_s": p99, "errors": errors[0]}))
""")


def _load(lab: Any, target: str, clients: int, seconds: float) -> dict[str, Any]:
    out = lab.exec("tiefighter", [sys.executable, "-I", "-c", LOAD, target, str(BACKEND_PORT), str(clients),
                                  str(seconds)],
                   timeout=seconds + 60, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    if result["errors"] or not result["requests"]:
        raise RuntimeError(f"load generator saw {result['errors']} errors and {result['requests']} answers")
    return result


def run(quick: bool = False) -> dict[str, Any]:
    """Figures for 1 and 32 keep-alive clients: rps and p99 ms, direct and through the proxy."""
    import workbench as wb
    from workbench.node.topology import pod_netns

    seconds, repeats = (1.5, 1) if quick else (5.0, 3)
    lab = wb.Lab.up(name=f"b{uuid.uuid4().hex[:6]}")
    try:
        eps = lab.endpoints
        backend_pod = eps[eps.pod.str.startswith("deathstar-")].iloc[0]
        target = str(backend_pod.ipv4)
        backend = subprocess.Popen(["ip", "netns", "exec", pod_netns(lab.name, str(backend_pod.pod)), sys.executable, "-I", "-c",
                                    BACKEND, str(BACKEND_PORT)], stdout=subprocess.PIPE, text=True)
        samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
        try:
            assert backend.stdout is not None and backend.stdout.readline().strip() == "ready"
            _measure(lab, target, seconds, repeats, samples)
        finally:
            backend.kill()
            backend.wait()
        proxied = int(lab.call("l7.status")["accepted"])
    finally:
        lab.down()
    return _figures(samples, seconds, repeats, proxied)


def _measure(lab: Any, target: str, seconds: float, repeats: int,
             samples: dict[tuple[str, int], list[dict[str, Any]]]) -> None:
    """Direct and proxied runs alternate, so both see the same machine state."""
    for _ in range(repeats):
        for mode in ("direct", "proxy"):
            if mode == "proxy":
                lab.policy.apply(L7_POLICY)
            try:
                for clients in (1, 32):
                    samples.setdefault((mode, clients), []).append(_load(lab, target, clients, seconds))
            finally:
                lab.policy.delete(all=True)


def _figures(samples: dict[tuple[str, int], list[dict[str, Any]]], seconds: float, repeats: int,
             proxied: int) -> dict[str, Any]:
    result: dict[str, Any] = {"seconds_per_sample": seconds, "repeats": repeats, "proxy_connections": proxied}
    for clients in (1, 32):
        direct_rps = figure([s["requests"] / s["seconds"] for s in samples[("direct", clients)]], "requests/s")
        direct_p99 = figure([s["p99_s"] * 1e3 for s in samples[("direct", clients)]], "ms",
                            higher_is_better=False)
        result[f"clients_{clients}"] = {
            "direct_rps": direct_rps,
            "proxy_rps": figure([s["requests"] / s["seconds"] for s in samples[("proxy", clients)]], "requests/s",
                                baseline=direct_rps),
            "direct_p99_ms": direct_p99,
            "proxy_p99_ms": figure([s["p99_s"] * 1e3 for s in samples[("proxy", clients)]], "ms",
                                   baseline=direct_p99, higher_is_better=False),
        }
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
