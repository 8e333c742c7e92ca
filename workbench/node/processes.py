"""Starting processes inside a pod: its network namespace and its cgroup.

The cgroup matters as much as the netns: the socket load balancer and, later,
other cgroup programs act on a pod's processes by their cgroup.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

from workbench.node.netlink import NETNS_DIR

CLONE_NEWNET = 0x40000000
APPS_SCRIPT = Path(__file__).resolve().parent / "apps.py"
DNS_SCRIPT = Path(__file__).resolve().parent / "dnsapp.py"

_libc = ctypes.CDLL(None, use_errno=True)


def spawn_in_pod(netns: str, cgroup: Path, argv: list[str], log: Path,
                 pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """Start ``argv`` in netns ``netns`` and cgroup ``cgroup``, output appended to ``log``.

    The child joins both before exec (preexec_fn), so not a single instruction
    of the program runs outside the pod. Called from the agent, which starts
    pods before it runs any thread.
    """
    ns_fd = os.open(f"{NETNS_DIR}/{netns}", os.O_RDONLY)
    procs = str(cgroup / "cgroup.procs")

    def enter_pod() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))
        if _libc.setns(ns_fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")

    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "ab") as out:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=enter_pod, pass_fds=pass_fds, cwd="/", start_new_session=True)
    finally:
        os.close(ns_fd)


def app_argv(app: str, pod: str, ports: list[tuple[int, str]], ready_fd: int) -> list[str]:
    """Command line of a built-in app (stdlib only, isolated mode: starts fast)."""
    argv = [sys.executable, "-I", str(APPS_SCRIPT), "--app", app, "--pod", pod, "--ready-fd", str(ready_fd)]
    for number, protocol in ports:
        argv += ["--port", f"{number}/{protocol}"]
    return argv


def dns_app_argv(pod: str, records: Path, ready_fd: int) -> list[str]:
    """Command line of the lab's DNS server (the kube-dns pod's app): the environment's Python, isolated
    from the caller's variables, so dnspython imports from it."""
    return [sys.executable, "-I", str(DNS_SCRIPT), "--pod", pod, "--records", str(records),
            "--ready-fd", str(ready_fd)]


def exec_argv(netns: str, cgroup: Path, command: list[str]) -> list[str]:
    """A command line that runs ``command`` in the pod's netns, cgroup and /etc/netns hosts file.

    `ip netns exec` bind-mounts /etc/netns/<netns>/* over /etc in a private
    mount namespace (and remounts /sys, hiding the cgroup mount), so the shell
    joins the cgroup first and then exec's `ip netns exec`; membership survives
    exec. No fork hook is needed, which keeps this safe from threaded callers
    such as a notebook kernel.
    """
    join = f'echo $$ > "{cgroup}/cgroup.procs" && exec ip netns exec "$0" "$@"'
    return ["sh", "-c", join, netns, *command]
