"""Where a lab keeps its state, and how it is removed without trusting that state.

    RUN_ROOT/<lab>/config.json       what the agent builds (validated LabSpec + CIDRs)
    RUN_ROOT/<lab>/state.json        what the agent built (endpoints, services), for listings
    RUN_ROOT/<lab>/identities.json   identity allocation, kept across agent restarts
    RUN_ROOT/<lab>/agent.sock        the agent's local API
    RUN_ROOT/<lab>/agent.pid, agent.log, logs/<pod>.log

`teardown` enumerates what exists (netns by prefix, the lab's cgroup subtree,
pins, hosts dirs) instead of reading state.json, so it also cleans up after an
agent killed with SIGKILL in the middle of building the lab.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from workbench.datapath import build
from workbench.errors import ValidationError
from workbench.lab.model import Endpoint
from workbench.lab.names import is_lab_name
from workbench.node import netlink, system
from workbench.node.inventory import ETC_NETNS, remove_cgroup_tree

AGENT_CGROUP = "_agent"     # not a valid pod name, so it never collides with one
WORLD_CGROUP = "_world"


def state_dir(lab: str) -> Path:
    return system.RUN_ROOT / lab


def make_state_dir(lab: str) -> Path:
    """The lab's state directory, mode 0700 (root's): not the umask's choice."""
    system.RUN_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    directory = state_dir(lab)
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def socket_path(lab: str) -> Path:
    return state_dir(lab) / "agent.sock"


def pid_path(lab: str) -> Path:
    return state_dir(lab) / "agent.pid"


def log_dir(lab: str) -> Path:
    return state_dir(lab) / "logs"


def pod_log(lab: str, pod: str) -> Path:
    return log_dir(lab) / f"{pod}.log"


def lab_cgroup(lab: str) -> Path:
    root = system.cgroup2_root()
    if root is None:
        raise ValidationError("no cgroup2 mount")
    return root / system.CGROUP_PARENT / lab


def pod_cgroup(lab: str, pod: str) -> Path:
    return lab_cgroup(lab) / pod


def known_labs() -> list[str]:
    """Labs on this node: a state dir (running, starting, or left by a dead agent) or a node netns."""
    from workbench.node import netlink

    names = {p.name for p in system.RUN_ROOT.iterdir() if p.is_dir()} if system.RUN_ROOT.exists() else set()
    names |= {ns[len(system.NETNS_PREFIX):-len("-node")] for ns in netlink.list_netns(system.NETNS_PREFIX)
              if ns.endswith("-node")}
    return sorted(name for name in names if is_lab_name(name))


def agent_running(lab: str) -> bool:
    """Is the lab's agent process alive (it may still be building and not answer yet)?"""
    return _agent_pid(lab) is not None


def leftovers(lab: str) -> bool:
    """Does anything of the lab exist (running or not)?"""
    prefix = f"{system.NETNS_PREFIX}{lab}-"
    cg = system.cgroup2_root()
    return bool(state_dir(lab).exists() or netlink.list_netns(prefix) or build.pin_dir(lab).exists()
                or (cg is not None and lab_cgroup(lab).exists())
                or (ETC_NETNS.exists() and any(ETC_NETNS.glob(f"{prefix}*"))))


def _agent_pid(lab: str) -> int | None:
    try:
        pid = int(pid_path(lab).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    # The pid file may be stale and the pid reused: only a workbench agent of this lab counts.
    return pid if b"workbench.agent" in cmdline and lab.encode() in cmdline else None


def stop_agent(lab: str, timeout: float = 5.0) -> None:
    """SIGTERM the agent (it exits without touching the datapath), SIGKILL when it lingers."""
    pid = _agent_pid(lab)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _agent_pid(lab) is None or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, FileNotFoundError):
        pass


@netlink.off_event_loop
def teardown(lab: str, keep_identities: bool = False) -> list[str]:
    """Remove everything of the lab; idempotent. Returns what was found and removed."""
    prefix = f"{system.NETNS_PREFIX}{lab}-"
    removed: list[str] = []
    stop_agent(lab)
    cg = system.cgroup2_root()
    if cg is not None and lab_cgroup(lab).exists():
        # Kills the agent (if it survived), every pod process and every `exec` still running.
        remove_cgroup_tree(lab_cgroup(lab))
        removed.append(f"cgroup {lab_cgroup(lab)}")
        try:
            lab_cgroup(lab).parent.rmdir()      # the shared wb/ parent, only when empty
        except OSError:
            pass
    for ns in netlink.list_netns(prefix):
        netlink.remove_netns(ns)
        removed.append(f"netns {ns}")
    if ETC_NETNS.exists():
        for directory in ETC_NETNS.glob(f"{prefix}*"):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(f"hosts {directory}")
    if build.pin_dir(lab).exists():
        build.remove_pins(lab)
        removed.append(f"pins {build.pin_dir(lab)}")
    directory = state_dir(lab)
    if directory.exists():
        for child in directory.iterdir():
            if keep_identities and child.name == "identities.json":
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        if not keep_identities:
            shutil.rmtree(directory, ignore_errors=True)
        removed.append(f"state {directory}")
    return removed


def saved_endpoints(lab: str) -> list[Endpoint]:
    """The endpoints the agent recorded in state.json (for use while no agent runs)."""
    import json

    try:
        data = json.loads((state_dir(lab) / "state.json").read_text())
    except (OSError, ValueError):
        return []
    endpoints = []
    for item in data.get("endpoints", []):
        ep = Endpoint(**{k: v for k, v in item.items() if k in Endpoint.__dataclass_fields__})
        ep.labels = tuple(ep.labels)
        endpoints.append(ep)
    return endpoints
