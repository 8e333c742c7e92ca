"""Just enough HTTP/1.1 for a policy proxy: request/response heads and body framing.

Pure: the parsers are generators that say which read they need next
(sans-IO), so the blocking readers below (any binary file object; unit tested
without sockets) and the proxy's event loop run the very same checks.
The proxy forwards the head line by line with CRLF endings and the body as
framed; parsing finds the method, target, headers and where the message ends.
A request whose framing another parser could read differently (both
Transfer-Encoding and Content-Length, obfuscated codings, control bytes in
values, sloppy chunk lines) is refused, so the backend can never see a request
the policy did not judge.

Example::

    >>> import io
    >>> req = read_request(io.BytesIO(b"GET /v1/ HTTP/1.1\\r\\nHost: deathstar\\r\\n\\r\\n"))
    >>> req.method, req.target, req.headers["host"], req.body_length
    ('GET', '/v1/', 'deathstar', 0)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, BinaryIO

MAX_HEAD = 64 * 1024
MAX_LINE = 8 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(rb"HTTP/1\.[01]")
# RFC 9110 5.5: a field value is visible characters, SP and HTAB; CR, LF and NUL never.
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9112 7.1: chunk-size is hex digits, then optional extensions; no sign, prefix or spaces.
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})(;[^\r\n]*)?\r\n")


class MalformedHTTP(Exception):
    """The peer sent something that is not HTTP/1.x; the text says what."""


@dataclass
class Message:
    """A request or response head; ``head`` holds the raw bytes as received."""

    start: tuple[str, str, str]
    headers: dict[str, str]
    head: bytes
    version: str = "HTTP/1.1"
    chunked: bool = False
    body_length: int | None = 0       # None: until the connection closes (responses only)
    keep_alive: bool = True

    @property
    def method(self) -> str:
        return self.start[0]

    @property
    def target(self) -> str:
        return self.start[1]

    @property
    def status(self) -> int:
        return int(self.start[1])


# The parsers are generators (sans-IO): each yields the read it needs, one of the operations below,
# and is sent the bytes back; ``run`` drives them over a binary file (tests, anything blocking) and the
# proxy drives them over its non-blocking sockets. One parser for both: every check below applies to
# both, and the proxy decides itself how long it waits for each read.
LINE = "line"     # readline(n): up to and including b"\n", at most n bytes; fewer, or b"", at EOF
EXACT = "exact"   # read(n): n bytes, fewer only at EOF
SOME = "some"     # read1(n): 1 to n bytes, b"" at EOF
WRITE = "write"   # pass these body bytes on (framing included); sent None back
Step = tuple[str, Any]
Parser = Generator[Step, Any, Any]


def run(parser: Parser, rfile: BinaryIO, write: Callable[[bytes], Any] | None = None) -> Any:
    """Drive ``parser`` over a blocking binary file; ``write`` gets the body bytes (None: discarded)."""
    try:
        step = next(parser)
        while True:
            kind, arg = step
            if kind == LINE:
                step = parser.send(rfile.readline(arg))
            elif kind == EXACT:
                step = parser.send(rfile.read(arg) or b"")
            elif kind == SOME:
                step = parser.send(rfile.read1(arg) if hasattr(rfile, "read1") else rfile.read(arg))
            else:
                if write is not None:
                    write(arg)
                step = parser.send(None)
    except StopIteration as done:
        return done.value


def _head_lines() -> Generator[Step, bytes, list[bytes] | None]:
    """Lines of one message head without CRLF; None on a clean EOF before any byte."""
    lines: list[bytes] = []
    total = 0
    while True:
        line = yield LINE, MAX_LINE + 1
        if not line:
            if not lines:
                return None
            raise MalformedHTTP("connection closed in the middle of a message head")
        if len(line) > MAX_LINE:
            raise MalformedHTTP(f"header line longer than {MAX_LINE} bytes")
        total += len(line)
        if total > MAX_HEAD:
            raise MalformedHTTP(f"message head larger than {MAX_HEAD} bytes")
        if not line.endswith(b"\n"):
            raise MalformedHTTP("connection closed in the middle of a line")
        stripped = line.rstrip(b"\r\n")
        if not stripped:
            if not lines:
                continue  # RFC 9112: a server should ignore empty lines before the request line
            return lines
        lines.append(stripped)


def _headers(lines: list[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            # also obs-fold (a line starting with SP/HTAB) and space before the colon (RFC 9112 5.1, 5.2)
            raise MalformedHTTP(f"bad header line {line[:60]!r}")
        if _BAD_VALUE_BYTE.search(value):
            # a bare CR (or other control byte) could end the line for the backend but not for us
            raise MalformedHTTP(f"control character in header {name[:40].decode('ascii')!r}")
        key = name.decode("ascii").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _request_framing_checks(msg: Message) -> None:
    """Refuse every request whose body length two HTTP parsers could read differently (RFC 9112 6.1, 6.3).

    The proxy forwards the head as received, so the backend must frame the body
    exactly as the proxy did: otherwise bytes the proxy took for a body become a
    request the policy never saw (request smuggling).
    """
    if "transfer-encoding" in msg.headers:
        if "content-length" in msg.headers:
            raise MalformedHTTP("both Transfer-Encoding and Content-Length (request smuggling)")
        if msg.version == "HTTP/1.0":
            raise MalformedHTTP("Transfer-Encoding in an HTTP/1.0 request")
        if msg.headers["transfer-encoding"].lower() != "chunked":
            raise MalformedHTTP(f"unsupported transfer-encoding {msg.headers['transfer-encoding']!r}")


def _framing(msg: Message, is_request: bool) -> None:
    if is_request:
        _request_framing_checks(msg)
    encoding = msg.headers.get("transfer-encoding", "").lower()
    if encoding:
        if encoding.split(",")[-1].strip() != "chunked":
            raise MalformedHTTP(f"unsupported transfer-encoding {encoding!r}")
        msg.chunked, msg.body_length = True, None
    elif "content-length" in msg.headers:
        value = msg.headers["content-length"].strip()
        if not value.isdigit() or len(value) > 18:   # also refuses repeated values ("4, 4")
            raise MalformedHTTP(f"bad content-length {value!r}")
        msg.body_length = int(value)
    else:
        msg.body_length = 0 if is_request else None
    connection = msg.headers.get("connection", "").lower()
    if msg.version == "HTTP/1.0":
        msg.keep_alive = "keep-alive" in connection
    else:
        msg.keep_alive = "close" not in connection


def request_parser() -> Generator[Step, bytes, Message | None]:
    """Parser of the next request head from a client (returns None: the client closed cleanly)."""
    lines = yield from _head_lines()
    if lines is None:
        return None
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1] or not _VERSION.fullmatch(parts[2]):
        raise MalformedHTTP(f"bad request line {lines[0][:80]!r}")
    method, target, version = (p.decode("latin-1") for p in parts)
    msg = Message((method, target, version), _headers(lines[1:]), b"\r\n".join(lines) + b"\r\n\r\n", version)
    _framing(msg, is_request=True)
    return msg


def response_parser(request_method: str) -> Generator[Step, bytes, Message]:
    """Parser of the response head to ``request_method`` (HEAD, 1xx, 204 and 304 have no body)."""
    lines = yield from _head_lines()
    if lines is None:
        raise MalformedHTTP("the server closed the connection without answering")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not _VERSION.fullmatch(parts[0]) or not parts[1].isdigit() or len(parts[1]) != 3:
        raise MalformedHTTP(f"bad status line {lines[0][:80]!r}")
    version, status = parts[0].decode(), parts[1].decode()
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    msg = Message((version, status, reason), _headers(lines[1:]), b"\r\n".join(lines) + b"\r\n\r\n", version)
    _framing(msg, is_request=False)
    code = int(status)
    if request_method == "HEAD" or 100 <= code < 200 or code in (204, 304):
        msg.chunked, msg.body_length = False, 0
    if msg.body_length is None and not msg.chunked:
        msg.keep_alive = False  # the body ends when the server closes
    return msg


def body_parser(msg: Message) -> Generator[Step, Any, int]:
    """Parser of the body that follows ``msg``: yields it (raw, framing included) as WRITE steps; returns
    its size in bytes."""
    total = 0
    if msg.chunked:
        while True:
            line = yield LINE, MAX_LINE + 1
            if not line.endswith(b"\n"):
                raise MalformedHTTP("bad chunk size line")
            size_match = _CHUNK_SIZE.fullmatch(line)
            if size_match is None:
                raise MalformedHTTP(f"bad chunk size {line.split(b';')[0].strip()[:20]!r}")
            size = int(size_match.group(1), 16)
            yield WRITE, line
            total += len(line)
            if size == 0:
                while True:  # trailers up to the empty line
                    trailer = yield LINE, MAX_LINE + 1
                    if not trailer.endswith(b"\r\n") or b"\r" in trailer[:-2]:
                        raise MalformedHTTP("bad or unterminated chunked trailer line")
                    yield WRITE, trailer
                    total += len(trailer)
                    if trailer == b"\r\n":
                        return total
            data = yield EXACT, size + 2
            if len(data) != size + 2:
                raise MalformedHTTP("connection closed inside a chunk")
            if not data.endswith(b"\r\n"):
                raise MalformedHTTP("chunk data not followed by CRLF")
            yield WRITE, data
            total += len(data)
    if msg.body_length is None:  # until EOF
        while True:
            data = yield SOME, 65536
            if not data:
                return total
            yield WRITE, data
            total += len(data)
    remaining = msg.body_length
    while remaining:
        data = yield SOME, min(remaining, 65536)
        if not data:
            raise MalformedHTTP("connection closed inside a message body")
        yield WRITE, data
        total += len(data)
        remaining -= len(data)
    return total


def read_request(rfile: BinaryIO) -> Message | None:
    """The next request head from a client (None: the client closed cleanly)."""
    result: Message | None = run(request_parser(), rfile)
    return result


def read_response(rfile: BinaryIO, request_method: str) -> Message:
    """The response head to ``request_method`` (HEAD, 1xx, 204 and 304 have no body)."""
    result: Message = run(response_parser(request_method), rfile)
    return result


def copy_body(msg: Message, rfile: BinaryIO, write: Callable[[bytes], Any] | None = None) -> int:
    """Read the body that follows ``msg`` and pass it (raw, framing included) to ``write``; returns bytes.

    ``write`` None discards (a denied request's body).
    """
    result: int = run(body_parser(msg), rfile, write)
    return result


def simple_response(code: int, reason: str, body: str, keep_alive: bool) -> bytes:
    """A complete text/plain response (what the proxy itself answers: 403, 400, 502)."""
    data = body.encode()
    head = (f"HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {len(data)}\r\n"
            f"server: workbench-l7-proxy\r\n")
    if not keep_alive:
        head += "connection: close\r\n"
    return head.encode() + b"\r\n" + data


def request_path(target: str) -> str:
    """The path Cilium's rules match: origin-form as sent; absolute-form loses scheme and authority."""
    match = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*(/.*)?$", target)
    if match:
        return match.group(1) or "/"
    return target
