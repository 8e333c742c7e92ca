"""L7 rules are regular expressions from policy files: none may stall the proxy or the agent.

Patterns are RE2 (linear-time matching, as Envoy's safe_regex): ``/v1/(a+)+``
against ``/v1/`` + many ``a`` + ``!`` is the textbook catastrophic case for a
backtracking engine (years of CPU), and must be answered at once while the
agent's API keeps answering. What RE2 cannot do in linear time
(lookaround, backreferences) and repetitions too large to compile are
refused when the policy is applied, in one line, and nothing is applied.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from workbench.errors import ValidationError

DEATHSTAR = "deathstar.default.svc.cluster.local"


def l7_policy(name: str, path: str) -> str:
    return textwrap.dedent(f"""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {{name: {name}}}
        spec:
          endpointSelector: {{matchLabels: {{class: deathstar}}}}
          ingress:
          - fromEndpoints: [{{matchLabels: {{org: empire}}}}]
            toPorts:
            - ports: [{{port: "80", protocol: TCP}}]
              rules: {{http: [{{method: GET, path: {json.dumps(path)}}}]}}
    """)


# Requests on one keep-alive connection; prints per request the status and the seconds it took.
EVIL_CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    host, count, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.create_connection((host, 80), timeout=10)
    f = s.makefile("rb")
    out = []
    for i in range(count):
        target = "/v1/" + "a" * length + "!"
        started = time.monotonic()
        s.sendall(f"GET {target} HTTP/1.1\\r\\nHost: deathstar\\r\\n\\r\\n".encode())
        status = f.readline().split()[1].decode()
        size = 0
        while (line := f.readline()) not in (b"\\r\\n", b""):
            if line.lower().startswith(b"content-length:"):
                size = int(line.split(b":")[1])
        f.read(size)
        out.append([status, time.monotonic() - started])
        if status != "403":
            break
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def lab(starwars_lab):
    starwars_lab.policy.delete(all=True)
    starwars_lab.policy.apply(l7_policy("nested-quantifier", "/v1/(a+)+"))
    yield starwars_lab
    starwars_lab.policy.delete(all=True)


def evil(lab, count: int, length: int) -> list[list]:
    run = lab.exec("tiefighter", [sys.executable, "-I", "-c", EVIL_CLIENT, DEATHSTAR, str(count), str(length)],
                   timeout=60, check=True)
    return json.loads(run.stdout)


def test_the_rule_matches_what_it_should(lab):
    """The policy really is in force: /v1/aaa passes, a trailing '!' is denied."""
    ok = lab.exec("tiefighter", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5",
                                 f"http://{DEATHSTAR}/v1/aaaa"])
    assert ok.stdout == "404"       # forwarded: the deathstar has no such page
    assert [status for status, _ in evil(lab, 1, 40)] == ["403"]


def test_nested_quantifier_on_a_long_path_is_denied_at_once_and_the_api_answers(lab):
    # The longest path the proxy parses (its request line limit is 8 KiB), twenty times over.
    pings: list[float] = []
    done = threading.Event()

    def ping() -> None:
        while not done.is_set():
            started = time.monotonic()
            assert lab.call("agent.ping")["lab"] == lab.name
            pings.append(time.monotonic() - started)
            time.sleep(0.05)

    pinger = threading.Thread(target=ping)
    pinger.start()
    try:
        answers = evil(lab, 20, 8000)
    finally:
        done.set()
        pinger.join(10)
    assert [status for status, _ in answers] == ["403"] * 20
    assert max(seconds for _, seconds in answers) < 2.0, answers
    assert pings and max(pings) < 1.0, pings


def test_a_100k_path_is_answered_within_two_seconds_and_never_forwarded(lab):
    start = time.time()
    (status, seconds), = evil(lab, 1, 100_000)
    # 403 once matched; 400 when the request line is longer than the proxy parses: refused either way
    assert status in ("403", "400") and seconds < 2.0, (status, seconds)
    from datetime import UTC, datetime

    deadline = time.monotonic() + 5
    while True:     # L7 rows are written when the exchange ends
        rows = lab.flows(type="l7", since=datetime.fromtimestamp(start, UTC).isoformat())
        if len(rows) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(rows) >= 1 and not (rows.verdict == "FORWARDED").any(), rows[["verdict", "http_code"]]


@pytest.mark.parametrize("path, why", [
    ("/v1/(?=admin).*", "invalid regular expression"),         # lookahead
    ("/v1/(?<!x)y", "invalid regular expression"),              # lookbehind
    ("/v1/(a)\\1", "invalid regular expression"),               # backreference
    ("/v1/((a{1000}){1000}){1000}", "invalid regular expression"),   # a repetition too large to build
])
def test_patterns_re2_cannot_run_in_linear_time_are_refused_in_one_line(lab, tmp_path, path, why):
    before = lab.call("bpf.policy.get"), lab.call("policy.get")
    started = time.monotonic()
    with pytest.raises(ValidationError, match=why) as refused:
        lab.policy.apply(l7_policy("refused", path))
    assert len(str(refused.value).splitlines()) == 1 and "rules.http[0].path" in str(refused.value)
    with pytest.raises(ValidationError, match=why):
        lab.call("policy.apply", text=l7_policy("refused", path))      # the agent checks on its own
    file = tmp_path / "refused.yaml"
    file.write_text(l7_policy("refused", path))
    run = subprocess.run([sys.executable, "-m", "workbench", "policy", "apply", str(file), "--lab", lab.name],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and why in run.stderr, run.stderr
    assert time.monotonic() - started < 20
    after = lab.call("bpf.policy.get"), lab.call("policy.get")
    strip = [[{k: v for k, v in row.items() if k not in ("packets", "bytes")} for row in before[0]],
             [{k: v for k, v in row.items() if k not in ("packets", "bytes")} for row in after[0]]]
    assert strip[0] == strip[1] and before[1] == after[1]

