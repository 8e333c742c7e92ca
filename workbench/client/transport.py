"""Client of a lab agent's local API over the Unix socket RUN_ROOT/<lab>/agent.sock.

One request per connection, in the wire format of :mod:`workbench.wire`:
``{"method": "endpoint.list", "params": {}}`` is answered with ``{"ok": true,
"result": ...}`` or ``{"ok": false, "error": "...", "type": "NotFoundError"}``;
errors come back as the same WorkbenchError subclass the agent raised. A
method that answers with bulk bytes (``flows.query``: an Arrow IPC stream) is
called with :meth:`AgentClient.call_binary`.

Example::

    >>> AgentClient("default").call("endpoint.list")   # doctest: +SKIP
    [{'id': 1, 'pod': 'deathstar-...', ...}]
    >>> meta, payload = AgentClient("default").call_binary("flows.query")   # doctest: +SKIP
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from workbench import errors
from workbench.lab import names
from workbench.node import state
from workbench.wire import encode_request, read_reply


class AgentUnavailable(errors.NotFoundError):
    """No agent answers for this lab."""


class AgentClient:
    """Calls to the agent of ``lab``; ``socket_path`` serves another socket (a test or bench server)."""

    def __init__(self, lab: str = names.DEFAULT_LAB, timeout: float = 60.0, *,
                 socket_path: Path | None = None) -> None:
        self.lab = names.check_lab_name(lab)
        self.timeout = timeout
        self.socket_path = socket_path

    def call(self, method: str, **params: Any) -> Any:
        """Call a method of the agent; raises AgentUnavailable when the lab is not up."""
        result, payload = self._exchange(method, params)
        if payload is not None:
            raise errors.WorkbenchError(f"{method} of lab {self.lab} answers with binary data",
                                        hint="call it with AgentClient.call_binary")
        return result

    def call_binary(self, method: str, **params: Any) -> tuple[Any, bytes]:
        """Call a method that answers with bytes: (its JSON result, the payload).

        Example::

            >>> meta, payload = AgentClient("demo").call_binary("flows.query", after=10)  # doctest: +SKIP
            >>> meta["seq"], len(payload)                                                  # doctest: +SKIP
            (1234, 56789)
        """
        result, payload = self._exchange(method, params)
        if payload is None:
            raise errors.WorkbenchError(f"{method} of lab {self.lab} answered without binary data",
                                        hint="call it with AgentClient.call")
        return result, payload

    def _exchange(self, method: str, params: dict[str, Any]) -> tuple[Any, bytes | None]:
        from workbench.replay.session import session

        current = session()
        if current.replaying and current.replayer is not None and self.socket_path is None:
            return current.replayer.call(self.lab, method, params)
        if current.mode != "record" or method == "agent.ping":
            return self._socket_exchange(method, params)
        try:
            result, payload = self._socket_exchange(method, params)
        except AgentUnavailable:
            raise          # a lab that is not up yet (lab up polls): nothing to replay later
        except errors.WorkbenchError as err:
            current.record({"kind": "call", "method": method, "params": params,
                            "error": {"type": type(err).__name__, "message": str(err)}}, self.lab)
            raise
        kept = payload
        if method == "flows.export" and payload is None:
            kept = _exported_as_ipc(str(params.get("path")))   # the file the agent wrote, for the replay to write
        current.record({"kind": "call", "method": method, "params": params, "result": result}, self.lab, kept)
        return result, payload

    def _socket_exchange(self, method: str, params: dict[str, Any]) -> tuple[Any, bytes | None]:
        path = self.socket_path or state.socket_path(self.lab)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            try:
                sock.connect(str(path))
            except PermissionError:
                raise errors.PrivilegeError(f"talking to the agent of lab {self.lab} needs root "
                                            f"({path} is not accessible)", hint="run it with sudo") from None
            except (FileNotFoundError, ConnectionRefusedError, OSError) as err:
                raise AgentUnavailable(f"lab {self.lab} is not up (no agent at {path}: {err.strerror or err})",
                                       hint=f"workbench lab up --name {self.lab}") from None
            try:
                sock.sendall(encode_request(method, params))
                with sock.makefile("rb") as stream:
                    reply, payload = read_reply(stream, what=f"{method} of lab {self.lab}")
            except TimeoutError:
                raise errors.WorkbenchError(
                    f"{method} of lab {self.lab}: no answer within {self.timeout:g} s",
                    hint="the agent may still be working on it; see `workbench lab status`") from None
            except OSError as err:  # the agent closed or reset the connection mid-exchange
                raise AgentUnavailable(f"{method} of lab {self.lab}: the connection to the agent broke "
                                       f"({err.strerror or err})") from None
        finally:
            sock.close()
        if reply.get("ok"):
            return reply.get("result"), payload
        error_type = getattr(errors, str(reply.get("type")), errors.WorkbenchError)
        if not (isinstance(error_type, type) and issubclass(error_type, errors.WorkbenchError)):
            error_type = errors.WorkbenchError
        raise error_type(str(reply.get("error")))

    def alive(self) -> bool:
        """Does an agent answer (quickly) for this lab?"""
        try:
            AgentClient(self.lab, timeout=3.0, socket_path=self.socket_path).call("agent.ping")
            return True
        except errors.WorkbenchError:
            return False
        except OSError:
            return False


def _exported_as_ipc(path: str) -> bytes | None:
    """A parquet file of flows (an export) as Arrow IPC bytes, or None when it cannot be read."""
    from workbench.observe.archive import load_parquet
    from workbench.observe.ipc import to_ipc

    try:
        return to_ipc(load_parquet(path))
    except (OSError, errors.WorkbenchError, ValueError):
        return None
