"""The agent's local API: a registry of typed methods, and the Unix-socket server that answers them.

Wire format (one request per connection): the client writes one JSON line
``{"method": "endpoint.list", "params": {}}``; the agent answers one JSON line
``{"ok": true, "result": ...}`` or ``{"ok": false, "type": "NotFoundError",
"error": "..."}``; a method that returns a :class:`~workbench.wire.BinaryReply`
is answered with that line plus ``"binary": N`` and N raw bytes after it
(:mod:`workbench.wire`). Parameters are checked strictly against the method's
annotations before it runs (pydantic), so a wrong type is an error, never
coerced or taken for its truthiness.

Example::

    api = LocalAPI()
    api.register("agent.ping", lambda: {"pong": True})
    api.dispatch({"method": "agent.ping"})          # {"ok": True, "result": {"pong": True}}
"""

from __future__ import annotations

import grp
import json
import os
import socket
import socketserver
import struct
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic

from workbench.errors import ValidationError, WorkbenchError
from workbench.wire import BinaryReply as BinaryReply  # what a method returns to answer with raw bytes
from workbench.wire import write_reply

Method = Callable[..., Any]


def strictly_typed(name: str, fn: Method) -> Method:
    """``fn`` with its parameters validated strictly (pydantic) against its annotations.

    A bad call raises ValidationError naming the method, the parameter and what
    was expected, in one line.
    """
    checked = pydantic.validate_call(config=pydantic.ConfigDict(strict=True, arbitrary_types_allowed=True))(fn)

    def call(**params: Any) -> Any:
        try:
            return checked(**params)
        except pydantic.ValidationError as err:
            if err.title not in (getattr(fn, "__qualname__", ""), getattr(fn, "__name__", "")):
                raise  # raised inside fn, not by the argument check
            problem = err.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or "parameters"
            given = f", got {problem['input']!r}"[:80] if problem["type"] != "missing_argument" else ""
            raise ValidationError(f"{name}: parameter {where!r}: {problem['msg'].lower()}{given}") from None

    return call


MAX_CLIENTS = 256              # connections served at once
LISTEN_BACKLOG = 1024          # connections the kernel queues meanwhile
BUSY_WAIT = 10.0               # seconds a queued connection may wait for a slot
# one JSON request line: a policy text (at most 3 MiB) JSON-escaped is at most 18 MiB (6 bytes a byte)
MAX_REQUEST_BYTES = 24 << 20
REQUEST_DEADLINE = 3.0         # seconds to send the request line (socket timeout per read)
REPLY_DEADLINE = 60.0          # seconds a client may take to read the reply
ACCESS_GROUP = "workbench"     # besides root, members of this group may use the API


def access_gid() -> int | None:
    try:
        return grp.getgrnam(ACCESS_GROUP).gr_gid
    except KeyError:
        return None


def secure_socket(path: Path) -> None:
    """Mode 0660, group ``workbench`` when it exists: not the umask's choice."""
    gid = access_gid()
    if gid is not None:
        os.chown(path, 0, gid)
    os.chmod(path, 0o660 if gid is not None else 0o600)


def peer_allowed(conn: socket.socket) -> bool:
    """Is the peer root, this agent's own user, or in the workbench group (SO_PEERCRED)?"""
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid in (0, os.getuid()):
        return True
    allowed = access_gid()
    if allowed is None:
        return False
    if gid == allowed:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    groups = next((line.split()[1:] for line in status.splitlines() if line.startswith("Groups:")), [])
    return str(allowed) in groups


class LocalAPI:
    """Named methods and the socket server that serves them."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}
        self._server: socketserver.UnixStreamServer | None = None
        self.register("agent.methods", self.names)

    def register(self, name: str, fn: Method) -> None:
        """Serve ``fn(**params)`` as method ``name``; its parameters are type-checked strictly."""
        if name in self.methods:
            raise ValueError(f"local API method {name} is registered twice")
        self.methods[name] = strictly_typed(name, fn)

    def names(self) -> list[str]:
        return sorted(self.methods)

    def dispatch(self, request: Any) -> dict[str, Any]:
        """One request dict -> one reply dict; never raises."""
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return {"ok": False, "type": "ValidationError", "error": "a request is {\"method\": NAME, \"params\": {}}"}
        method = request["method"]
        params = request.get("params") or {}
        if not isinstance(params, dict):
            return {"ok": False, "type": "ValidationError", "error": f"{method}: params must be an object"}
        if method not in self.methods:
            return {"ok": False, "type": "NotFoundError",
                    "error": f"the agent has no method {method!r}; it has {', '.join(self.names())}"}
        try:
            return {"ok": True, "result": self.methods[method](**params)}
        except WorkbenchError as err:
            return {"ok": False, "type": type(err).__name__, "error": str(err)}
        except Exception as err:  # the server must outlive a broken handler; the log keeps the trace
            traceback.print_exc()
            return {"ok": False, "type": "WorkbenchError", "error": f"{method} failed: {type(err).__name__}: {err}"}

    def serve(self, path: Path) -> None:
        """Answer requests on the Unix socket ``path`` until :meth:`shutdown`.

        Bounded: at most :data:`MAX_CLIENTS` connections are served at once (more
        wait in a listen backlog of :data:`LISTEN_BACKLOG`), a request line may have
        :data:`MAX_REQUEST_BYTES` and must arrive within :data:`REQUEST_DEADLINE`
        seconds, and only root or members of the ``workbench`` group may call
        (checked with SO_PEERCRED, on top of the socket's mode 0660).
        """
        api = self
        path.unlink(missing_ok=True)
        slots = threading.BoundedSemaphore(MAX_CLIENTS)

        class Handler(socketserver.StreamRequestHandler):
            timeout = REQUEST_DEADLINE   # a client that sends nothing is dropped, not kept

            def handle(self) -> None:
                if not peer_allowed(self.connection):
                    write_reply(self.wfile, {"ok": False, "type": "PrivilegeError",
                                             "error": "the lab agent answers only root and the workbench group"})
                    return
                try:
                    line = self.rfile.readline(MAX_REQUEST_BYTES + 1)
                except (TimeoutError, OSError):
                    return
                if len(line) > MAX_REQUEST_BYTES:
                    reply: dict[str, Any] = {"ok": False, "type": "ValidationError",
                                             "error": f"request longer than {MAX_REQUEST_BYTES} bytes"}
                else:
                    try:
                        request = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        reply = {"ok": False, "type": "ValidationError", "error": "bad request: not JSON"}
                    else:
                        reply = api.dispatch(request)
                self.connection.settimeout(REPLY_DEADLINE)
                write_reply(self.wfile, reply)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True
            request_queue_size = LISTEN_BACKLOG

            def process_request(self, request: Any, client_address: Any) -> None:
                if not slots.acquire(timeout=BUSY_WAIT):
                    busy = {"ok": False, "type": "WorkbenchError",
                            "error": f"the agent is serving {MAX_CLIENTS} clients; try again"}
                    try:
                        request.sendall(json.dumps(busy).encode() + b"\n")
                    finally:
                        self.shutdown_request(request)
                    return
                super().process_request(request, client_address)

            def process_request_thread(self, request: Any, client_address: Any) -> None:
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    slots.release()

        self._server = Server(str(path), Handler)
        secure_socket(path)
        self._server.serve_forever(poll_interval=0.2)
        self._server.server_close()

    def shutdown(self) -> str:
        """Stop serving (from any thread, also from inside a request)."""
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, daemon=True).start()
        return "shutting down"
