"""The local API's wire format, shared by the agent (server) and the client: one request per connection.

Request: one JSON line ``{"method": "endpoint.list", "params": {}}``.

Reply: one JSON line ``{"ok": true, "result": ...}`` or ``{"ok": false,
"type": "NotFoundError", "error": "..."}``. A method that returns a
:class:`BinaryReply` is answered with the line ``{"ok": true, "result": META,
"binary": N}`` followed by exactly N raw bytes (the payload), so bulk data such
as an Arrow IPC stream crosses the socket without a JSON encoding. Every
other method's reply is unchanged.

Example::

    >>> import io
    >>> out = io.BytesIO()
    >>> write_reply(out, {"ok": True, "result": BinaryReply({"rows": 2}, b"ab")})
    >>> out.getvalue()
    b'{"ok": true, "result": {"rows": 2}, "binary": 2}\\nab'
    >>> read_reply(io.BytesIO(out.getvalue()), what="demo")
    ({'ok': True, 'result': {'rows': 2}}, b'ab')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from workbench.errors import WorkbenchError

BINARY_KEY = "binary"


@dataclass(frozen=True)
class BinaryReply:
    """What a method returns to answer with raw bytes: JSON ``meta`` (the reply's result) and a ``payload``."""

    meta: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""


class Writer(Protocol):
    """Where a reply goes: a socket file, a BytesIO."""

    def write(self, data: bytes | memoryview, /) -> object: ...


class Reader(Protocol):
    """Where a reply comes from: a socket file, a BytesIO."""

    def readline(self) -> bytes: ...

    def read(self, size: int, /) -> bytes: ...


class WireError(WorkbenchError):
    """A reply that does not follow the wire format (cut short, not JSON)."""


def encode_request(method: str, params: dict[str, Any]) -> bytes:
    """The request line for ``method(**params)``."""
    return json.dumps({"method": method, "params": params}).encode() + b"\n"


def write_reply(stream: Writer, reply: dict[str, Any]) -> None:
    """Write one reply dict; a :class:`BinaryReply` result becomes the header line plus its payload."""
    result = reply.get("result")
    if isinstance(result, BinaryReply):
        payload = memoryview(result.payload)
        header = {**reply, "result": result.meta, BINARY_KEY: payload.nbytes}
        stream.write(json.dumps(header, default=str).encode() + b"\n")
        stream.write(payload)  # unjoined: a large payload is not copied again
    else:
        stream.write(json.dumps(reply, default=str).encode() + b"\n")


def read_reply(stream: Reader, *, what: str) -> tuple[dict[str, Any], bytes | None]:
    """Read one reply: (the reply dict without the length, the payload or None).

    ``what`` names the exchange in errors ("flows.query of lab demo"). Raises
    WireError, in one line, when the connection closes early or the header is
    not a JSON object.
    """
    line = stream.readline()
    if not line.endswith(b"\n"):
        raise WireError(f"{what}: the connection closed before the reply"
                        + (f" ({len(line)} bytes of its first line)" if line else ""))
    try:
        reply = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WireError(f"{what}: the reply is not JSON ({err})") from None
    if not isinstance(reply, dict):
        raise WireError(f"{what}: the reply is not a JSON object")
    if BINARY_KEY not in reply:
        return reply, None
    size = reply.pop(BINARY_KEY)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise WireError(f"{what}: the reply announces {size!r} binary bytes, not a byte count")
    payload = stream.read(size)
    if len(payload) != size:
        raise WireError(f"{what}: the connection closed after {len(payload)} of {size} bytes of binary reply")
    return reply, payload
