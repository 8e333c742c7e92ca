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

import json
import socketserver
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
        """Answer requests on the Unix socket ``path`` until :meth:`shutdown`."""
        api = self
        path.unlink(missing_ok=True)

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                try:
                    request = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    reply: dict[str, Any] = {"ok": False, "type": "ValidationError", "error": "bad request: not JSON"}
                else:
                    reply = api.dispatch(request)
                write_reply(self.wfile, reply)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self._server = Server(str(path), Handler)
        self._server.serve_forever(poll_interval=0.2)
        self._server.server_close()

    def shutdown(self) -> str:
        """Stop serving (from any thread, also from inside a request)."""
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, daemon=True).start()
        return "shutting down"
