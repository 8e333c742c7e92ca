"""Client of a lab agent's local API: JSON lines over the Unix socket RUN_ROOT/<lab>/agent.sock.

One request per connection: ``{"method": "endpoint.list", "params": {}}`` is
answered with ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
"...", "type": "NotFoundError"}``; errors come back as the same
WorkbenchError subclass the agent raised.

Example::

    >>> AgentClient("default").call("endpoint.list")   # doctest: +SKIP
    [{'id': 1, 'pod': 'deathstar-...', ...}]
"""

from __future__ import annotations

import json
import socket
from typing import Any

from workbench import errors
from workbench.lab import names
from workbench.node import state


class AgentUnavailable(errors.NotFoundError):
    """No agent answers for this lab."""


class AgentClient:
    def __init__(self, lab: str = names.DEFAULT_LAB, timeout: float = 60.0) -> None:
        self.lab = names.check_lab_name(lab)
        self.timeout = timeout

    def call(self, method: str, **params: Any) -> Any:
        """Call a method of the agent; raises AgentUnavailable when the lab is not up."""
        path = state.socket_path(self.lab)
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
            sock.sendall(json.dumps({"method": method, "params": params}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        finally:
            sock.close()
        if not data:
            raise errors.WorkbenchError(f"the agent of lab {self.lab} closed the connection during {method}")
        reply = json.loads(data)
        if reply.get("ok"):
            return reply.get("result")
        error_type = getattr(errors, str(reply.get("type")), errors.WorkbenchError)
        if not (isinstance(error_type, type) and issubclass(error_type, errors.WorkbenchError)):
            error_type = errors.WorkbenchError
        raise error_type(str(reply.get("error")))

    def alive(self) -> bool:
        """Does an agent answer (quickly) for this lab?"""
        try:
            AgentClient(self.lab, timeout=3.0).call("agent.ping")
            return True
        except errors.WorkbenchError:
            return False
        except OSError:
            return False
