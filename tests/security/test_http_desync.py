"""HTTP request smuggling and framing tricks against the L7 proxy, sent raw from tiefighter.

The lab runs the star-wars demo with the shipped L7 rule (``rule1-l7.yaml``:
the empire may only ``POST /v1/request-landing`` to the deathstar). Every case
below is written byte for byte to one TCP connection from tiefighter to the
deathstar service. Whatever the proxy answers, two things must hold for each:

- the deathstar executed nothing but ``POST /v1/request-landing`` (its own
  request log is the witness, not the proxy's word);
- the L7 flows say what happened: every request the backend executed has a
  FORWARDED flow, and the requests it did not execute show DROPPED/403 or
  ERROR/400.

The cases follow the known desync families: CL.TE, TE.CL and TE.TE
(obfuscated Transfer-Encoding), duplicate and conflicting Content-Length,
bare CR and bare LF line ends, obs-fold, absolute-form targets, oversized
heads and pipelining.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest

import workbench as wb

from .conftest import BackendLog

DEATHSTAR = "deathstar.default.svc.cluster.local"
ALLOWED = ("POST", "/v1/request-landing")

LAND = b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\n"
HIDDEN = b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n"
HIDDEN_CHUNK = b"%x\r\n" % len(HIDDEN) + HIDDEN + b"\r\n0\r\n\r\n"


def with_te(te_lines: bytes, body: bytes = HIDDEN_CHUNK, content_length: int | None = 4) -> bytes:
    """A landing request with the given Transfer-Encoding header line(s), optionally a Content-Length too."""
    cl = b"Content-Length: %d\r\n" % content_length if content_length is not None else b""
    return LAND + cl + te_lines + b"\r\n" + body


CASES: dict[str, bytes] = {
    # CL.TE: a Content-Length front end would forward it all, a chunked backend would run the hidden PUT
    "cl_te": LAND + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(HIDDEN)) + HIDDEN,
    # TE.CL: a chunked front end would forward the chunk, a Content-Length backend would run its content
    "te_cl": with_te(b"Transfer-Encoding: chunked\r\n"),
    # TE.TE: Transfer-Encoding headers one parser honours and another ignores
    "te_space_before_colon": with_te(b"Transfer-Encoding : chunked\r\n"),
    "te_space_before_colon_no_cl": with_te(b"Transfer-Encoding : chunked\r\n", content_length=None),
    "te_xchunked": with_te(b"Transfer-Encoding: xchunked\r\n"),
    "te_xchunked_no_cl": with_te(b"Transfer-Encoding: xchunked\r\n", content_length=None),
    "te_chunked_identity": with_te(b"Transfer-Encoding: chunked, identity\r\n", content_length=None),
    "te_identity_chunked": with_te(b"Transfer-Encoding: identity, chunked\r\n", content_length=None),
    "te_tab_value": with_te(b"Transfer-Encoding:\tchunked\r\n"),
    "te_tab_before_colon": with_te(b"Transfer-Encoding\t: chunked\r\n", content_length=None),
    "te_vertical_tab": with_te(b"Transfer-Encoding: \x0bchunked\r\n", content_length=None),
    "te_leading_space_fold": with_te(b"X-Padding: a\r\n Transfer-Encoding: chunked\r\n"),
    "te_duplicated": with_te(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", content_length=None),
    "te_duplicated_with_cl": with_te(b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n"),
    "te_in_http10": (b"POST /v1/request-landing HTTP/1.0\r\nHost: deathstar\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + HIDDEN_CHUNK),
    # Content-Length: repeated, conflicting, signed, listed
    "cl_duplicate": LAND + b"Content-Length: 0\r\nContent-Length: 0\r\n\r\n" + HIDDEN,
    "cl_conflicting": LAND + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(HIDDEN) + HIDDEN,
    "cl_list": LAND + b"Content-Length: 0, %d\r\n\r\n" % len(HIDDEN) + HIDDEN,
    "cl_plus_sign": LAND + b"Content-Length: +%d\r\n\r\n" % len(HIDDEN) + HIDDEN,
    "cl_space_before_colon": LAND + b"Content-Length : %d\r\n\r\n" % len(HIDDEN) + HIDDEN,
    # line ends: a bare CR inside a line, bare LF everywhere, obs-fold
    "bare_cr_in_value": LAND + b"X-Note: a\rContent-Length: %d\r\nContent-Length: 0\r\n\r\n" % len(HIDDEN) + HIDDEN,
    "bare_cr_line_ends": (b"POST /v1/request-landing HTTP/1.1\rHost: deathstar\rContent-Length: %d\r\r\n"
                          % len(HIDDEN) + HIDDEN),
    "bare_lf_line_ends": b"POST /v1/request-landing HTTP/1.1\nHost: deathstar\nContent-Length: 0\n\n"
                         + HIDDEN.replace(b"\r\n", b"\n"),
    "obs_fold_content_length": LAND + b"X-Padding: a\r\n Content-Length: %d\r\n\r\n" % len(HIDDEN) + HIDDEN,
    "obs_fold_tab": LAND + b"X-Padding: a\r\n\tContent-Length: %d\r\n\r\n" % len(HIDDEN) + HIDDEN,
    "nul_in_value": LAND + b"Content-Length: 0\x00%d\r\n\r\n" % len(HIDDEN) + HIDDEN,
    "nel_in_value": LAND + b"X-Note: a\x85Content-Length: %d\r\nContent-Length: 0\r\n\r\n" % len(HIDDEN) + HIDDEN,
    # targets the policy could read differently from the backend
    "absolute_form_denied": b"PUT http://deathstar/v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n",
    "absolute_form_allowed_method": b"POST http://deathstar/v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n",
    "absolute_form_other_host": (b"PUT http://deathstar/v1/exhaust-port HTTP/1.1\r\nHost: other\r\n"
                                 b"Content-Length: 0\r\n\r\n"),
    "tab_in_request_line": b"PUT\t/v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n",
    "two_spaces_in_request_line": b"POST /v1/request-landing  HTTP/1.1\r\nHost: deathstar\r\n\r\n",
    "lowercase_method": b"put /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\n\r\n",
    # sizes
    "oversized_request_line": b"PUT /v1/exhaust-port?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: deathstar\r\n\r\n",
    "oversized_header": LAND + b"X-Big: " + b"b" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n" + HIDDEN,
    "oversized_head": LAND + b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 4000) for i in range(20)) + b"\r\n" + HIDDEN,
    # pipelining: each request judged on its own
    "pipelined_allowed_then_denied": LAND + b"Content-Length: 0\r\n\r\n" + HIDDEN,
    "pipelined_denied_then_allowed": HIDDEN + LAND + b"Content-Length: 0\r\n\r\n",
    "pipelined_after_close": LAND + b"Connection: close\r\nContent-Length: 0\r\n\r\n" + HIDDEN,
    "body_that_looks_like_a_request": LAND + b"Content-Length: %d\r\n\r\n" % len(HIDDEN) + HIDDEN,
    "denied_with_body_then_denied": (b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: deathstar\r\nContent-Length: %d\r\n\r\n"
                                     % len(HIDDEN) + HIDDEN + HIDDEN),
    "upgrade_h2c_then_denied": (LAND + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                                b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 0\r\n\r\n" + HIDDEN),
    "chunked_body_holding_a_request": with_te(b"Transfer-Encoding: chunked\r\n", content_length=None),
    "chunked_ext_holding_a_method": with_te(b"Transfer-Encoding: chunked\r\n", content_length=None,
                                            body=b"5;PUT /v1/exhaust-port HTTP/1.1\r\nhello\r\n0\r\n\r\n"),
    "connect_tunnel": b"CONNECT deathstar:80 HTTP/1.1\r\nHost: deathstar:80\r\n\r\n" + HIDDEN,
}

# Well-formed chunked requests the policy allows: the proxy forwards the body as chunks, and the lab's
# deathstar (Python's http.server) does not decode chunked request bodies, so it reads the chunk-size
# line as a request of its own and refuses it (400/501, connection closed), possibly while the proxy
# still sends the chunks (the proxy then answers 502). What it executed is still checked; the stray
# refusal is the backend's, not a request the policy did not judge.
CHUNKED_BODY_FORWARDED = {"chunked_body_holding_a_request", "chunked_ext_holding_a_method"}

# Requests that are plain HTTP: each must still be served, each judged on its own.
MUST_SERVE = {
    "pipelined_allowed_then_denied": ["200", "403"],
    "pipelined_denied_then_allowed": ["403", "200"],
    "pipelined_after_close": ["200"],
    "body_that_looks_like_a_request": ["200"],
    "denied_with_body_then_denied": ["403", "403"],
}

# Sends one case on one connection, half-closes, and prints what came back (hex) and the client port.
RAW_CLIENT = textwrap.dedent("""
    import json, socket, sys
    payload = bytes.fromhex(sys.stdin.read())
    s = socket.create_connection((sys.argv[1], 80), timeout=5)
    port = s.getsockname()[1]
    try:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
    except OSError:
        pass   # the proxy may refuse and close before it has read everything
    data, reset = b"", False
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            reset = True
            break
        if not chunk:
            break
        data += chunk
    print(json.dumps({"port": port, "answer": data.hex(), "reset": reset}))
""")


@pytest.fixture(scope="module")
def corpus(starwars_lab):
    """Every case sent once; per case the client's answer, its port and the backend's new log lines."""
    lab = starwars_lab
    lab.policy.delete(all=True)
    lab.policy.apply(wb.example("rule1-l7.yaml"))
    log = BackendLog(lab)
    log.new_lines()
    start = time.time()
    results = {}
    for name, payload in CASES.items():
        run = lab.exec("tiefighter", [sys.executable, "-I", "-c", RAW_CLIENT, DEATHSTAR], input=payload.hex(),
                       timeout=30, check=True)
        out = json.loads(run.stdout)
        results[name] = {"port": out["port"], "answer": bytes.fromhex(out["answer"]), "reset": out["reset"],
                         "log": log.new_lines()}
    time.sleep(0.5)
    late = log.new_lines()          # a request executed after its client was answered would show here
    flows = wait_for_l7_rows(lab, {r["port"] for r in results.values()}, start)
    yield results, late, flows
    lab.policy.delete(all=True)


def wait_for_l7_rows(lab, ports: set[int], since: float):
    """The L7 flows of the corpus; rows are written when each exchange ends."""
    from datetime import UTC, datetime

    iso = datetime.fromtimestamp(since, UTC).isoformat()
    deadline = time.monotonic() + 10
    while True:
        rows = lab.flows(type="l7", since=iso)
        # request rows carry the client's port as source, reply rows as destination
        rows = rows[rows.src_port.isin(ports) | rows.dst_port.isin(ports)]
        if set(rows.src_port) >= ports or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_no_late_execution(corpus):
    _results, late, _flows = corpus
    assert BackendLog.requests(late) == []


@pytest.mark.parametrize("case", list(CASES))
def test_only_the_allowed_request_reaches_the_backend_and_flows_tell_the_truth(corpus, case):
    results, _late, flows = corpus
    result = results[case]
    executed = BackendLog.executed(result["log"])
    answer = result["answer"].decode("latin-1")
    assert all(request == ALLOWED for request in executed), (case, result["log"])
    if case not in CHUNKED_BODY_FORWARDED:
        # nothing the proxy took for a body (or refused) was parsed by the backend as a request
        assert len(BackendLog.requests(result["log"])) == len(executed), (case, result["log"])
    assert "Panic" not in answer, (case, answer)

    mine = flows[flows.src_port == result["port"]]
    replies = flows[(flows.dst_port == result["port"]) & flows.is_reply.astype(bool)]
    assert len(mine) >= 1, f"{case}: no L7 flow for client port {result['port']}"
    sent_on = mine.verdict == "FORWARDED"
    expected_outcomes = {("DROPPED", 403), ("ERROR", 400)}
    if case in CHUNKED_BODY_FORWARDED:
        # the deathstar may close while the proxy still sends the chunks: allowed, sent, then a 502
        sent_on |= (mine.verdict == "ERROR") & (mine.http_code == 502)
        expected_outcomes.add(("ERROR", 502))
    forwarded = mine[sent_on]
    flowed = Counter((row.http_method, urlsplit(row.http_url).path) for row in forwarded.itertuples())
    assert flowed == Counter(executed), (case, mine[["verdict", "http_code", "http_method", "http_url"]], result["log"])
    refused = mine[mine.verdict != "FORWARDED"]
    outcomes = set(zip(refused.verdict, refused.http_code.astype(int), strict=True))
    assert outcomes <= expected_outcomes, (case, outcomes)
    # each answer the client got is one of the proxy's or the allowed request's, one per flow
    # (a proxy that refuses a head still being sent closes with unread bytes: the kernel's reset
    # may discard its 400 at the client before it is read, so a reset client may have fewer)
    statuses = re.findall(r"(?m)^HTTP/1\.[01] (\d{3}) ", answer)
    told = Counter(str(int(code)) for code in [*refused.http_code, *replies.http_code])
    if result["reset"]:
        assert Counter(statuses) <= told, (case, answer)
    else:
        assert Counter(statuses) == told, (case, answer)
    if case in MUST_SERVE:
        assert statuses == MUST_SERVE[case], (case, answer)
        assert executed == [ALLOWED] * MUST_SERVE[case].count("200"), (case, result["log"])
