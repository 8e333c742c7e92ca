"""The L7 proxy's pure parts: HTTP/1.1 framing, its own answers, and the flow rows of exchanges."""

from __future__ import annotations

import io

import pytest

from workbench.agent.l7.flows import record_exchange
from workbench.agent.l7.http import (
    MalformedHTTP,
    copy_body,
    read_request,
    read_response,
    request_path,
    simple_response,
)
from workbench.agent.l7.proxy import Decision, Exchange, upstream_mark
from workbench.observe.store import FlowStore


def test_keep_alive_requests_are_read_one_after_another_with_their_bodies():
    stream = io.BytesIO(b"POST /v1/request-landing HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 5\r\n\r\nhello"
                        b"PUT /v1/exhaust-port HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
                        b"GET / HTTP/1.0\r\n\r\n")
    first = read_request(stream)
    assert first is not None and (first.method, first.target, first.body_length) == ("POST", "/v1/request-landing", 5)
    body: list[bytes] = []
    assert copy_body(first, stream, body.append) == 5 and b"".join(body) == b"hello"
    assert first.head.startswith(b"POST /v1/request-landing HTTP/1.1\r\n") and first.head.endswith(b"\r\n\r\n")
    second = read_request(stream)
    assert second is not None and second.chunked and second.keep_alive
    raw: list[bytes] = []
    copy_body(second, stream, raw.append)
    assert b"".join(raw) == b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"   # forwarded as received
    third = read_request(stream)
    assert third is not None and third.version == "HTTP/1.0" and not third.keep_alive
    assert read_request(stream) is None                               # clean end


@pytest.mark.parametrize("raw, why", [
    (b"THIS IS NOT HTTP\r\n\r\n", "bad request line"),
    (b"GET / HTTP/2.0\r\n\r\n", "bad request line"),
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", "bad header line"),
    (b"GET / HTTP/1.1\r\nContent-Length: ten\r\n\r\n", "bad content-length"),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported transfer-encoding"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n", "closed in the middle of a message head"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", "longer than"),
])
def test_malformed_requests_raise_with_a_reason(raw, why):
    with pytest.raises(MalformedHTTP, match=why):
        read_request(io.BytesIO(raw))


def test_bad_chunk_sizes_are_malformed():
    stream = io.BytesIO(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    msg = read_request(stream)
    assert msg is not None
    with pytest.raises(MalformedHTTP, match="bad chunk size"):
        copy_body(msg, stream)


def test_response_framing():
    plain = read_response(io.BytesIO(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nShip landed\n"), "POST")
    assert plain.status == 200 and plain.body_length == 12 and plain.keep_alive
    head = read_response(io.BytesIO(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"), "HEAD")
    assert head.body_length == 0
    no_content = read_response(io.BytesIO(b"HTTP/1.1 204 No Content\r\n\r\n"), "GET")
    assert no_content.body_length == 0 and no_content.keep_alive
    stream = io.BytesIO(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
    until_close = read_response(stream, "GET")
    assert until_close.body_length is None and not until_close.keep_alive
    out: list[bytes] = []
    copy_body(until_close, stream, out.append)
    assert b"".join(out) == b"until the end"
    with pytest.raises(MalformedHTTP, match="without answering"):
        read_response(io.BytesIO(b""), "GET")


def test_rules_see_the_path_as_sent_and_absolute_form_loses_the_authority():
    assert request_path("/v1/x?y=1") == "/v1/x?y=1"
    assert request_path("http://deathstar/v1/x") == "/v1/x"
    assert request_path("http://deathstar") == "/"


def test_the_proxys_own_answers():
    denied = simple_response(403, "Forbidden", "Access denied\r\n", keep_alive=True)
    msg = read_response(io.BytesIO(denied), "PUT")
    assert msg.status == 403 and msg.keep_alive and msg.body_length == len("Access denied\r\n")
    assert denied.endswith(b"\r\n\r\nAccess denied\r\n")
    assert b"connection: close" in simple_response(400, "Bad Request", "x", keep_alive=False)


def test_upstream_mark_encodes_the_client_identity():
    assert upstream_mark(300) == 0x0A00 | 300 << 16
    cidr = 1 << 24 | 0x12345          # a local CIDR identity (a world client behind a toCIDR rule)
    mark = upstream_mark(cidr)
    assert mark & 0x0F00 == 0x0A00
    # the decoding of bpf/lib/l7.h l7_proxy_identity
    assert (mark >> 16) | (mark & 0xFF) << 16 | ((mark >> 12) & 0xF) << 24 == cidr
    with pytest.raises(ValueError):
        upstream_mark(0)
    with pytest.raises(ValueError):
        upstream_mark(1 << 28)


def test_exchanges_become_hubble_style_l7_rows():
    store = FlowStore()
    decision = Decision(True, 300, 301)
    record_exchange(store, Exchange(("10.0.0.5", 40000), ("10.0.0.7", 80), "POST", "http://deathstar/v1/request-landing",
                                    200, "FORWARDED", 1_500_000, decision, 120, 150))
    record_exchange(store, Exchange(("10.0.0.5", 40000), ("10.0.0.7", 80), "PUT", "http://deathstar/v1/exhaust-port",
                                    403, "DROPPED", None, Decision(False, 300, 301)))
    record_exchange(store, Exchange(("10.0.0.5", 40002), ("10.0.0.7", 80), "", "http://10.0.0.7:80/", 400,
                                    "ERROR", None, None))
    frame = store.frame()
    assert list(frame.event_type) == ["l7"] * 4
    assert list(frame.verdict) == ["FORWARDED", "FORWARDED", "DROPPED", "ERROR"]
    request, response, denied, malformed = (frame.iloc[i] for i in range(4))
    assert request.http_method == "POST" and request.src_ip == "10.0.0.5" and not request.is_reply
    assert response.is_reply and response.src_ip == "10.0.0.7" and response.http_code == 200
    assert response.l7_latency_ns == 1_500_000 and int(response.src_identity) == 301
    assert denied.http_code == 403 and denied.http_url == "http://deathstar/v1/exhaust-port"
    assert malformed.http_code == 400 and str(malformed.http_method) in ("nan", "<NA>", "None")


@pytest.mark.parametrize("raw, why", [
    # CL.TE: the backend would frame by Content-Length and read the chunked body as a new request
    (b"POST /v1/request-landing HTTP/1.1\r\nHost: d\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
     "both Transfer-Encoding and Content-Length"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", "both Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", "unsupported transfer-encoding"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", "unsupported transfer-encoding"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
     "unsupported transfer-encoding"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n", "bad header line"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding:\x0bchunked\r\n\r\n", "control character"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
    (b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 7\r\n\r\n", "bad content-length"),
    (b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", "bad content-length"),
    (b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n", "bad content-length"),
    (b"GET / HTTP/1.1\r\nX-A: one\rTwo: 2\r\n\r\n", "control character in header 'X-A'"),
    (b"GET / HTTP/1.1\r\nHost: d\r\n folded\r\n\r\n", "bad header line"),
])
def test_requests_two_parsers_could_frame_differently_are_refused(raw, why):
    with pytest.raises(MalformedHTTP, match=why):
        read_request(io.BytesIO(raw))


@pytest.mark.parametrize("body, why", [
    (b"0x4\r\nabcd\r\n0\r\n\r\n", "bad chunk size"),
    (b" 4\r\nabcd\r\n0\r\n\r\n", "bad chunk size"),
    (b"+4\r\nabcd\r\n0\r\n\r\n", "bad chunk size"),
    (b"4\nabcd\r\n0\r\n\r\n", "bad chunk size"),
    (b"4\r\nabcdXY0\r\n\r\n", "not followed by CRLF"),
    (b"4\r\nabcd\r\n0\r\nX: a\rb\r\n\r\n", "trailer"),
])
def test_sloppy_chunk_framing_is_refused(body, why):
    stream = io.BytesIO(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    msg = read_request(stream)
    assert msg is not None and msg.chunked
    with pytest.raises(MalformedHTTP, match=why):
        copy_body(msg, stream)


def test_the_forwarded_head_has_crlf_line_endings_even_when_the_client_used_bare_lf():
    msg = read_request(io.BytesIO(b"GET /v1/ HTTP/1.1\nHost: deathstar\n\n"))
    assert msg is not None and msg.head == b"GET /v1/ HTTP/1.1\r\nHost: deathstar\r\n\r\n"
