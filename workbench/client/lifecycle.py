"""Starting and stopping a lab: the agent process and its clean-up.

Client side (CLI, Python API): no netlink here except in `teardown`, which is
wrapped for notebook kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from workbench.client.transport import AgentClient
from workbench.errors import WorkbenchError
from workbench.lab import names
from workbench.lab.ipam import DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR, check_lab_cidrs
from workbench.lab.manifests import LabSpec
from workbench.node import state, system

AGENT_START_TIMEOUT = 120.0


@dataclass
class UpOutcome:
    lab: str
    already_up: bool
    status: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)


def start_lab(spec: LabSpec, name: str | None = None, pod_cidr: str = DEFAULT_POD_CIDR,
              service_cidr: str = DEFAULT_SERVICE_CIDR, timeout: float = AGENT_START_TIMEOUT,
              observe: dict[str, Any] | None = None, fqdn_min_ttl: int = 0) -> UpOutcome:
    """Start the agent of lab ``name`` and wait until the lab is ready.

    When an agent already answers, nothing changes (``already_up``). When the
    agent died but its lab is intact and built from the same manifests, a new
    agent adopts it (pods keep running, like a restarted cilium-agent);
    otherwise the remains are removed (identities kept) and the lab is rebuilt.
    ``observe`` holds the flow layer's options (capacity, metrics_port,
    archive_dir); they may change when a new agent adopts a lab, as may ``fqdn_min_ttl`` (the
    least time, in seconds, a name learnt by the DNS proxy keeps its addresses). ``name``
    defaults to ``$WORKBENCH_LAB``, else ``default``.
    """
    name = names.check_lab_name(name or names.default_lab())
    check_lab_cidrs(pod_cidr, service_cidr)
    system.require_ready(f"lab up {name}")
    client = AgentClient(name)
    if client.alive():
        return UpOutcome(name, True, client.call("lab.status"))
    config = {"spec": spec.to_dict(), "pod_cidr": pod_cidr, "service_cidr": service_cidr,
              "observe": observe or {}, "dns": {"min_ttl": fqdn_min_ttl}}
    recovered: list[str] = []
    if state.leftovers(name):
        if _adoptable(name, config):
            state.write_private(state.state_dir(name) / "config.json", json.dumps(config))  # new observe options
            try:
                status = _launch(name, adopt=True, timeout=timeout)
                return UpOutcome(name, False, status, spec.warnings, ["adopted the running lab"])
            except WorkbenchError:
                pass     # fall back to a rebuild
        recovered = state.teardown(name, keep_identities=True)
    state.write_private(state.make_state_dir(name) / "config.json", json.dumps(config))
    return UpOutcome(name, False, _launch(name, adopt=False, timeout=timeout), spec.warnings, recovered)


def _adoptable(name: str, config: dict[str, Any]) -> bool:
    """A finished build (state.json) from the same configuration, with its node still there."""
    directory = state.state_dir(name)
    built_from = ("spec", "pod_cidr", "service_cidr")   # what the running lab is made of
    try:
        old = json.loads((directory / "config.json").read_text())
        new = json.loads(json.dumps(config))
        same = all(old.get(key) == new.get(key) for key in built_from)
        ready = json.loads((directory / "state.json").read_text())["status"]["status"] == "ready"
    except (OSError, ValueError, KeyError):
        return False
    return same and ready and os.path.exists(f"/run/netns/{system.NETNS_PREFIX}{name}-node")


def _launch(name: str, adopt: bool, timeout: float) -> dict[str, Any]:
    """Start the agent process and wait for its API; tear down what it built when it fails."""
    directory = state.state_dir(name)
    (directory / "agent.error").unlink(missing_ok=True)
    argv = [sys.executable, "-m", "workbench.agent", "--lab", name] + (["--adopt"] if adopt else [])
    client = AgentClient(name)
    # 0600 whatever the umask (the caller's: the agent sets its own only once it runs)
    fd = os.open(directory / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab") as log:
        # A session of its own: the agent outlives the CLI and ignores its Ctrl-C.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd="/", env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            error_file = directory / "agent.error"
            reason = error_file.read_text().strip() if error_file.exists() else _log_tail(name)
            if not adopt:
                state.teardown(name, keep_identities=True)
            raise WorkbenchError(f"lab {name} failed to start: {reason}")
        if state.socket_path(name).exists() and client.alive():
            return dict(client.call("lab.status"))
        time.sleep(0.05)
    state.teardown(name, keep_identities=True)
    raise WorkbenchError(f"lab {name} did not come up within {timeout:.0f} s (agent log: {_log_tail(name)})")


def _log_tail(name: str) -> str:
    log = state.state_dir(name) / "agent.log"
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return lines[-1] if lines else "no output"


def stop_lab(name: str | None = None) -> list[str]:
    """Remove the lab completely (also after a crashed agent); idempotent. Returns what was removed."""
    name = names.check_lab_name(name or names.default_lab())
    system.require_privileges(f"lab down {name}")
    return state.teardown(name)


def lab_status(name: str | None = None) -> dict[str, Any]:
    """The agent's status, or what is known without it ("down" / "broken")."""
    name = names.check_lab_name(name or names.default_lab())
    client = AgentClient(name)
    if client.alive():
        return dict(client.call("lab.status"))
    if state.agent_running(name):
        return {"lab": name, "status": "starting", "detail": "the agent is building the lab"}
    if state.leftovers(name):
        return {"lab": name, "status": "broken",
                "detail": "the agent is not running but lab state exists; run `workbench lab down "
                          f"--name {name}` (or lab up again)"}
    return {"lab": name, "status": "down"}
