"""L7 HTTP policy end to end: the star-wars lab, the seed's L7 rule, real curl/http.client traffic.

The datapath redirects tiefighter's connections to the deathstar into the
agent's transparent proxy (bpf_sk_assign); the proxy answers denied requests
with 403 and forwards allowed ones; every request becomes an L7 flow row.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime

import pytest

import workbench as wb
from tests.waiting import wait_exited, wait_until
from workbench.errors import ValidationError

DEATHSTAR = "deathstar.default.svc.cluster.local"
SEED_L7 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: rule1
spec:
  description: "L7 policy to restrict access to specific HTTP call"
  endpointSelector:
    matchLabels: {org: empire, class: deathstar}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      rules:
        http:
        - method: "POST"
          path: "/v1/request-landing"
"""


@pytest.fixture(scope="module")
def lab():
    lab = wb.Lab.up(name=f"l{uuid.uuid4().hex[:6]}")
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def seed_policy(lab):
    lab.policy.apply(SEED_L7)
    try:
        yield
    finally:
        lab.policy.delete(all=True)


def curl(lab, pod: str, method: str, path: str, timeout: int = 3):
    return lab.exec(pod, ["curl", "-s", "-m", str(timeout), "-X", method, f"http://{DEATHSTAR}{path}"])


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def accepted(lab) -> int:
    return int(lab.call("l7.status")["accepted"])


def curl_from(lab, pod: str, method: str, path: str, timeout: int = 3) -> tuple[str, int]:
    """curl as :func:`curl`, also returning the client's source port: the key to this request's flows."""
    run = lab.exec(pod, ["curl", "-s", "-m", str(timeout), "-X", method, "-w", "\n%{local_port}",
                         f"http://{DEATHSTAR}{path}"])
    body, _, port = run.stdout.rpartition("\n")
    return body, int(port)


def own(frame, ports):
    """The rows of the connections from these client ports: requests by source, replies by destination."""
    ports = set(ports)
    return frame[frame.src_port.isin(ports) | frame.dst_port.isin(ports)]


def wait_flows(lab, ports, count: int, **filters):
    """This test's L7 rows (by client port), once there are ``count`` of them.

    L7 rows are written when the exchange ends and reach the store through
    the agent; other tests' rows never count, so the result is exact.
    """
    def enough():
        frame = own(lab.flows(type="l7", **filters), ports)
        return frame if len(frame) >= count else None

    return wait_until(enough, 10, f"{count} L7 flow rows of client ports {sorted(ports)} ({filters or 'any'})")


def test_seed_l7_policy_allows_landing_denies_exhaust_port_xwing_times_out(lab, seed_policy):
    before = accepted(lab)
    landed = curl(lab, "tiefighter", "POST", "/v1/request-landing")
    assert landed.exit_code == 0 and landed.stdout == "Ship landed\n"
    denied = lab.exec("tiefighter", ["curl", "-s", "-m", "3", "-o", "/dev/stdout", "-w", "%{http_code}",
                                     "-X", "PUT", f"http://{DEATHSTAR}/v1/exhaust-port"])
    assert denied.stdout.splitlines() == ["Access denied", "403"]
    assert accepted(lab) == before + 2          # both went through the proxy
    xwing = curl(lab, "xwing", "POST", "/v1/request-landing", timeout=2)
    assert xwing.exit_code == 28                # L3/L4 drop: curl's timeout, no HTTP answer
    assert accepted(lab) == before + 2          # xwing never reached the proxy


def test_l7_flow_rows_carry_method_url_code_identities(lab, seed_policy):
    start = time.time()
    _, post_port = curl_from(lab, "tiefighter", "POST", "/v1/request-landing")
    _, put_port = curl_from(lab, "tiefighter", "PUT", "/v1/exhaust-port")
    since = iso(start)
    rows = wait_flows(lab, {post_port, put_port}, 3, since=since)
    assert len(rows) == 3, rows[["src_port", "dst_port", "http_method", "verdict", "is_reply"]]
    tiefighter = lab.endpoints.set_index("pod").loc["tiefighter"]
    [request] = rows[(rows.src_port == post_port) & ~rows.is_reply.astype(bool)].itertuples()
    [response] = rows[(rows.dst_port == post_port) & rows.is_reply.astype(bool)].itertuples()
    [denied] = rows[rows.src_port == put_port].itertuples()
    assert request.http_method == "POST" and denied.http_method == "PUT"
    assert request.verdict == "FORWARDED" and request.src_pod == "tiefighter"
    assert request.dst_pod.startswith("deathstar-") and request.dst_port == 80
    assert request.http_url == f"http://{DEATHSTAR}/v1/request-landing"
    assert int(request.src_identity) == int(tiefighter.identity)
    assert response.http_code == 200 and response.l7_latency_ns > 0 and response.dst_pod == "tiefighter"
    assert denied.verdict == "DROPPED" and denied.http_code == 403
    assert denied.http_url == f"http://{DEATHSTAR}/v1/exhaust-port"
    assert denied.traffic_direction == "INGRESS" and list(denied.src_labels) == list(request.src_labels)
    # the filters of `observe --type l7 --http-method --http-path --http-status`
    mine = {post_port, put_port}
    only_put = own(lab.flows(type="l7", http_method="PUT", http_status="403", since=since), mine)
    assert list(only_put.src_port) == [put_port] and only_put.iloc[0].verdict == "DROPPED"
    landing = own(lab.flows(type="l7", http_path="/v1/request-.*", since=since), mine)
    assert len(landing) == 2 and set(landing.src_port) | set(landing.dst_port) >= {post_port}
    assert list(own(lab.flows(type="l7", http_status="2+", since=since), mine).dst_port) == [post_port]
    cli = subprocess.run([sys.executable, "-m", "workbench", "observe", "--name", lab.name, "--type", "l7",
                          "--http-method", "PUT", "--http-status", "403", "-o", "json"],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    lines = [json.loads(line) for line in cli.stdout.splitlines()]
    assert lines and all(f["http_code"] == 403 and f["http_method"] == "PUT" for f in lines)
    assert [f["src_port"] for f in lines].count(put_port) == 1


def test_backend_sees_the_client_identity_of_proxied_connections(lab, seed_policy):
    start = time.time()
    _, port = curl_from(lab, "tiefighter", "POST", "/v1/request-landing")
    tiefighter = int(lab.endpoints.set_index("pod").loc["tiefighter"].identity)

    def both():
        verdicts = lab.flows(type="policy-verdict", since=iso(start))
        redirected = verdicts[(verdicts.verdict == "REDIRECTED") & (verdicts.src_port == port)]
        # nothing else talks to the deathstar in this test: its one ingress verdict is the proxy's upstream
        upstream = verdicts[(verdicts.traffic_direction == "INGRESS") & verdicts.dst_pod.str.startswith("deathstar-")]
        return (redirected, upstream) if len(redirected) and len(upstream) else None

    redirected, upstream = wait_until(both, 10, "the client's REDIRECTED verdict and the proxy upstream's verdict")
    assert len(redirected) == 1 and redirected.iloc[0].traffic_direction == "EGRESS"
    assert redirected.iloc[0].src_pod == "tiefighter"
    # the proxy's upstream leaves from the node (169.254.1.1) but is judged as tiefighter and forwarded
    assert len(upstream) == 1
    assert upstream.iloc[0].src_ip == "169.254.1.1" and int(upstream.iloc[0].src_identity) == tiefighter
    assert upstream.iloc[0].verdict == "FORWARDED"


KEEPALIVE_CLIENT = textwrap.dedent("""
    import http.client, json, sys
    conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)
    out = []
    for method, path in [("POST", "/v1/request-landing"), ("PUT", "/v1/exhaust-port"),
                         ("POST", "/v1/request-landing"), ("GET", "/v1/"), ("POST", "/v1/request-landing")]:
        conn.request(method, path, body=b"x" * 10 if method != "GET" else None)
        resp = conn.getresponse()
        out.append([method, path, resp.status, resp.read().decode(), conn.sock.getsockname()[1]])
    print(json.dumps(out))
""")


def test_keep_alive_connection_gets_a_verdict_per_request(lab, seed_policy):
    before = accepted(lab)
    run = lab.exec("tiefighter", [sys.executable, "-I", "-c", KEEPALIVE_CLIENT, DEATHSTAR], check=True)
    answers = json.loads(run.stdout)
    assert [(a[2], a[3]) for a in answers] == [
        (200, "Ship landed\n"), (403, "Access denied\r\n"), (200, "Ship landed\n"),
        (403, "Access denied\r\n"), (200, "Ship landed\n")]
    assert len({a[4] for a in answers}) == 1      # one TCP connection for all five
    assert accepted(lab) == before + 1


def test_policy_delete_removes_the_redirect(lab):
    lab.policy.apply(SEED_L7)
    try:
        assert curl(lab, "tiefighter", "PUT", "/v1/exhaust-port").stdout.strip() == "Access denied"
        assert (lab.policy.map.proxy_port > 0).any()
    finally:
        lab.policy.delete("rule1")
    before = accepted(lab)
    assert (lab.policy.map.proxy_port == 0).all()
    assert curl(lab, "tiefighter", "PUT", "/v1/exhaust-port").stdout == "Panic: deathstar exploded\n"
    assert curl(lab, "xwing", "POST", "/v1/request-landing").stdout == "Ship landed\n"
    assert accepted(lab) == before                 # nothing went through the proxy any more


@pytest.mark.parametrize("bad, message", [
    (SEED_L7.replace('path: "/v1/request-landing"', 'path: "/v1/(request"'),
     "rules.http[0].path: invalid regular expression"),
    (SEED_L7.replace("        protocol: TCP\n", ""), "L7 (HTTP) rules need protocol TCP; this port has no protocol"),
    (SEED_L7.replace("protocol: TCP", "protocol: UDP"), "this port has protocol UDP"),
])
def test_bad_l7_policy_is_refused_and_nothing_is_applied(lab, bad, message):
    lab.policy.apply(SEED_L7.replace("name: rule1", "name: keep"))
    try:
        entries_before = lab.policy.map.drop(columns=["packets", "bytes"]).to_dict(orient="records")
        with pytest.raises(ValidationError, match=re.escape(message)):
            lab.policy.apply(SEED_L7 + "---\n" + bad.replace("name: rule1", "name: bad"))
        assert set(lab.policy.get()["name"]) == {"keep"}
        assert lab.policy.map.drop(columns=["packets", "bytes"]).to_dict(orient="records") == entries_before
        # also when it reaches the agent without the client's own check
        with pytest.raises(ValidationError, match="protocol|regular expression"):
            lab.call("policy.apply", text=bad)
        assert set(lab.policy.get()["name"]) == {"keep"}
    finally:
        lab.policy.delete(all=True)


MALFORMED_CLIENT = textwrap.dedent("""
    import http.client, json, socket, sys
    keep = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)   # another connection, open throughout
    keep.request("POST", "/v1/request-landing")
    first = keep.getresponse().read().decode()
    out = {"first": first, "port": keep.sock.getsockname()[1]}
    for garbage in (b"THIS IS NOT HTTP\\r\\n\\r\\n", b"GET / HTTP/1.1\\r\\nbad header line\\r\\n\\r\\n"):
        s = socket.create_connection((sys.argv[1], 80), timeout=5)
        out.setdefault("bad_ports", []).append(s.getsockname()[1])
        s.sendall(garbage)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        out.setdefault("bad", []).append(data.decode().split("\\r\\n")[0])
    keep.request("POST", "/v1/request-landing")
    out["again"] = keep.getresponse().read().decode()
    out["same_port"] = keep.sock.getsockname()[1] == out["port"]
    print(json.dumps(out))
""")


def test_malformed_http_gets_400_a_flow_and_the_proxy_keeps_serving(lab, seed_policy):
    start = time.time()
    run = lab.exec("tiefighter", [sys.executable, "-I", "-c", MALFORMED_CLIENT, DEATHSTAR], check=True)
    out = json.loads(run.stdout)
    assert out["bad"] == ["HTTP/1.1 400 Bad Request"] * 2
    # the other connection was not disturbed: same socket, still answered
    assert out["first"] == out["again"] == "Ship landed\n" and out["same_port"]
    rows = wait_flows(lab, out["bad_ports"], 2, since=iso(start))
    assert sorted(rows.src_port) == sorted(out["bad_ports"]), rows[["src_port", "verdict", "http_code"]]
    assert set(rows.verdict) == {"ERROR"} and set(rows.http_code) == {400} and set(rows.src_pod) == {"tiefighter"}
    assert curl(lab, "tiefighter", "POST", "/v1/request-landing").stdout == "Ship landed\n"
    assert lab.call("l7.status")["errors"] == 0


SMUGGLING_CLIENT = textwrap.dedent("""
    import json, socket, sys
    hidden = b"PUT /v1/exhaust-port HTTP/1.1\\r\\nHost: deathstar\\r\\nContent-Length: 7\\r\\n\\r\\n"
    attacks = {
        # CL.TE: the proxy frames by chunks, a Content-Length backend would run the hidden PUT
        "cl_te": (b"POST /v1/request-landing HTTP/1.1\\r\\nHost: deathstar\\r\\nContent-Length: 4\\r\\n"
                  b"Transfer-Encoding: chunked\\r\\n\\r\\n" + b"%x\\r\\n" % len(hidden) + hidden + b"\\r\\n0\\r\\n\\r\\n"
                  b"POST /v1/request-landing HTTP/1.1\\r\\nHost: deathstar\\r\\nContent-Length: 0\\r\\n\\r\\n"),
        # a bare CR inside a header value: a lenient parser could end the line there
        "bare_cr": (b"POST /v1/request-landing HTTP/1.1\\r\\nHost: deathstar\\r\\nX-Note: a\\rContent-Length: 40"
                    b"\\r\\nContent-Length: 0\\r\\n\\r\\n" + hidden),
    }
    out, ports = {}, []
    for name, payload in attacks.items():
        s = socket.create_connection((sys.argv[1], 80), timeout=5)
        ports.append(s.getsockname()[1])
        s.sendall(payload)
        data = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        out[name] = data.decode(errors="replace")
    print(json.dumps({"answers": out, "ports": ports}))
""")


def deathstar_log_lines(lab, needle: str) -> int:
    from workbench.node.state import log_dir

    return sum(path.read_text().count(needle) for path in log_dir(lab.name).glob("deathstar*.log"))


def test_request_smuggling_is_refused_and_never_reaches_the_backend(lab, seed_policy):
    start = time.time()
    executed_before = deathstar_log_lines(lab, "exhaust-port")
    run = lab.exec("tiefighter", [sys.executable, "-I", "-c", SMUGGLING_CLIENT, DEATHSTAR], check=True)
    out = json.loads(run.stdout)
    for name, answer in out["answers"].items():
        # one 400 and the connection closed: nothing after it was read as a request
        assert answer.startswith("HTTP/1.1 400 Bad Request"), (name, answer)
        assert answer.count("HTTP/1.1") == 1 and "Panic" not in answer and "Ship landed" not in answer, (name, answer)
    assert deathstar_log_lines(lab, "exhaust-port") == executed_before    # the backend ran no hidden PUT
    refused = wait_flows(lab, out["ports"], 2, http_status="400", since=iso(start))
    assert sorted(refused.src_port) == sorted(out["ports"]), refused[["src_port", "verdict", "http_code"]]
    assert set(refused.verdict) == {"ERROR"}, refused[["verdict", "http_code", "summary"]]
    mine = own(lab.flows(type="l7", since=iso(start)), out["ports"])
    assert len(mine) == 2 and set(mine.verdict) == {"ERROR"}, mine[["verdict", "http_code", "summary"]]   # nothing FORWARDED


def test_metrics_count_l7_verdicts(lab, seed_policy):
    _, port = curl_from(lab, "tiefighter", "PUT", "/v1/exhaust-port")
    wait_flows(lab, {port}, 1, http_status="403")
    metrics = lab.metrics()
    l7 = metrics[(metrics["name"] == "hubble_flows_processed_total")
                 & metrics["labels"].astype(str).str.contains("L7")]
    text = " ".join(l7["labels"].astype(str))
    assert "DROPPED" in text and (l7["value"] > 0).all(), l7


EGRESS_L7 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: tiefighter-reads-only
spec:
  endpointSelector:
    matchLabels: {class: tiefighter}
  egress:
  - toEndpoints:
    - matchLabels: {class: deathstar}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/v1/.*"}]
  # the client looks the deathstar up by name: with an egress policy, DNS to kube-dns must be allowed too
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
"""


def test_egress_l7_rule_of_the_client(lab):
    start = time.time()
    lab.policy.apply(EGRESS_L7)
    try:
        body, get_port = curl_from(lab, "tiefighter", "GET", "/v1/")
        assert '"name": "Death Star"' in body
        body, post_port = curl_from(lab, "tiefighter", "POST", "/v1/request-landing")
        assert body.strip() == "Access denied"
        body, xwing_port = curl_from(lab, "xwing", "POST", "/v1/request-landing")
        assert body == "Ship landed\n"   # not selected
    finally:
        lab.policy.delete(all=True)
    rows = wait_flows(lab, {get_port, post_port}, 3, since=iso(start))
    assert len(rows) == 3, rows[["src_port", "dst_port", "http_method", "verdict", "is_reply"]]
    assert set(own(rows, {get_port}).verdict) == {"FORWARDED"} and len(own(rows, {get_port})) == 2
    [denied] = own(rows, {post_port}).itertuples()
    assert denied.verdict == "DROPPED" and denied.traffic_direction == "EGRESS"
    assert denied.http_method == "POST" and denied.http_code == 403
    assert own(lab.flows(type="l7", since=iso(start)), {xwing_port}).empty   # xwing never met the proxy


WORLD_L7 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: world-reads-only
spec:
  endpointSelector:
    matchLabels: {class: deathstar}
  ingress:
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/v1/.*"}]
"""


def test_world_clients_are_redirected_at_world0(lab):
    deathstar = str(lab.endpoints.set_index("pod").filter(like="deathstar-", axis=0).iloc[0].ipv4)
    world = f"wb-{lab.name}-world"

    def from_world(method: str, path: str) -> tuple[str, int]:
        run = subprocess.run(["ip", "netns", "exec", world, "curl", "-s", "-m", "3", "-X", method,
                              "-w", "\n%{local_port}", f"http://{deathstar}{path}"],
                             capture_output=True, text=True, timeout=30)
        body, _, port = run.stdout.rpartition("\n")
        return body, int(port)

    start = time.time()
    lab.policy.apply(WORLD_L7)
    try:
        before = accepted(lab)
        body, get_port = from_world("GET", "/v1/")
        assert '"name": "Death Star"' in body
        body, put_port = from_world("PUT", "/v1/exhaust-port")
        assert body.strip() == "Access denied"
        assert accepted(lab) == before + 2
        assert curl(lab, "tiefighter", "GET", "/v1/", timeout=2).exit_code == 28   # not allowed at L3
    finally:
        lab.policy.delete(all=True)
    rows = wait_flows(lab, {get_port, put_port}, 3, since=iso(start))
    assert len(rows) == 3 and set(own(rows, {get_port}).verdict) == {"FORWARDED"}
    [denied] = own(rows, {put_port}).itertuples()
    assert denied.verdict == "DROPPED" and denied.src_ip == "192.0.2.10"
    assert int(denied.src_identity) == 2 and denied.http_code == 403
    # the upstream is judged as world at the deathstar (the mark carries identity 2); only the GET had one
    def upstream_verdicts():
        v = lab.flows(type="policy-verdict", since=iso(start))
        found = v[(v.src_ip == "169.254.1.1") & (v.verdict == "FORWARDED")]
        return found if len(found) else None

    upstream = wait_until(upstream_verdicts, 10, "the policy verdict of the proxy's upstream connection")
    assert len(upstream) == 1 and set(upstream.src_identity.astype(int)) == {2}
    assert from_world("PUT", "/v1/exhaust-port")[0] == "Panic: deathstar exploded\n"   # no policy: direct


def test_connectivity_test_expectations_know_l7_rules(lab, seed_policy):
    report = lab.connectivity_test()
    # A deathstar pod probing its own service may be given itself as the backend: that connection never
    # leaves its netns (no datapath, no proxy), so its outcome depends on the LB's pick (a lab limit
    # that L3/L4 expectations share). Everything else must be as expected.
    assert all(p.source.startswith("deathstar-") and p.destination == "default/deathstar"
               for p in report.unexpected), report.summary()
    to_deathstar = [p for p in report.probes if p.source == "tiefighter" and "deathstar" in p.destination]
    # GET /v1/ is not POST /v1/request-landing: the proxy answers 403, and that is what was expected
    assert to_deathstar and all(not p.expected and not p.ok and "403" in p.detail for p in to_deathstar)


def test_expect_100_continue_bodies_are_not_stalled(lab, seed_policy):
    body = "x" * 4096

    # curl sends the body only on "100 Continue" (or a final answer); with its fallback timer at 60 s and
    # the whole request bounded at 20 s, an answer at all proves the proxy did not stall the body
    def post(method: str, path: str):
        return lab.exec("tiefighter", ["curl", "-s", "-m", "20", "--expect100-timeout", "60", "-X", method,
                                       "-H", "Expect: 100-continue", "--data-binary", "@-",
                                       "-w", "\n%{http_code}", f"http://{DEATHSTAR}{path}"], input=body)

    landed = post("POST", "/v1/request-landing").stdout.splitlines()
    assert landed == ["Ship landed", "", "200"]   # the body's own newline, then curl's http_code
    denied = post("PUT", "/v1/exhaust-port").stdout.splitlines()
    assert denied[0] == "Access denied" and denied[-1].split()[0] == "403"


def test_l7_policy_survives_an_agent_restart(lab, seed_policy):
    assert curl(lab, "tiefighter", "PUT", "/v1/exhaust-port").stdout.strip() == "Access denied"
    pid = int(lab.status()["agent_pid"])
    os.kill(pid, signal.SIGKILL)
    wait_exited(pid)   # the proxy's listener closes as the process exits
    # no proxy while the agent is down: the redirect fails closed (SOCKET_LOOKUP_FAILED), nothing bypasses it
    assert curl(lab, "tiefighter", "PUT", "/v1/exhaust-port", timeout=2).exit_code == 28
    again = wb.Lab.up(name=lab.name)             # a new agent adopts the lab and listens again
    assert curl(again, "tiefighter", "PUT", "/v1/exhaust-port").stdout.strip() == "Access denied"
    assert curl(again, "tiefighter", "POST", "/v1/request-landing").stdout == "Ship landed\n"
    assert 178 in {row["drop_reason"] for row in again.call("datapath.metrics") if row["verdict"] == "DROPPED"}


FRAMING_BACKEND = textwrap.dedent("""
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            if self.path == "/chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (b"alpha-", b"beta-", b"gamma"):
                    self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(part), part))
                self.wfile.write(b"0\\r\\n\\r\\n")
            else:  # /close: no length, the body ends when the server closes
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"until-close")
                self.close_connection = True
        def do_POST(self):
            size, body = 0, b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
            data = b"got %d bytes" % len(body)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    server = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
""")

FRAMING_CLIENT = textwrap.dedent("""
    import http.client, json, sys
    conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
    out = []
    conn.request("GET", "/chunked")
    out.append(conn.getresponse().read().decode())
    conn.request("POST", "/echo", body=iter([b"x" * 1000, b"y" * 24]), encode_chunked=True)
    out.append(conn.getresponse().read().decode())
    port = conn.sock.getsockname()[1]
    conn.request("GET", "/close")
    resp = conn.getresponse()
    out.append(resp.read().decode())
    out.append(port)
    print(json.dumps(out))
""")

VISIBILITY_8081 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: visibility-8081
spec:
  endpointSelector:
    matchLabels: {class: deathstar}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "8081", protocol: TCP}]
      rules: {http: [{}]}
"""


def test_chunked_and_close_delimited_messages_cross_the_proxy_intact(lab):
    pod = lab.endpoints.set_index("pod").filter(like="deathstar-", axis=0)
    name, address = pod.index[0], str(pod.iloc[0].ipv4)
    backend = subprocess.Popen(["ip", "netns", "exec", f"wb-{lab.name}-{name}", sys.executable, "-I", "-c",
                                FRAMING_BACKEND, "8081"], stdout=subprocess.PIPE, text=True)
    try:
        assert backend.stdout is not None and backend.stdout.readline().strip() == "ready"
        lab.policy.apply(VISIBILITY_8081)
        before = accepted(lab)
        run = lab.exec("tiefighter", [sys.executable, "-I", "-c", FRAMING_CLIENT, address, "8081"], check=True)
        chunked, echoed, until_close, _port = json.loads(run.stdout)
        assert chunked == "alpha-beta-gamma"
        assert echoed == "got 1024 bytes"
        assert until_close == "until-close"
        assert accepted(lab) == before + 1
    finally:
        lab.policy.delete(all=True)
        backend.kill()
        backend.wait()
