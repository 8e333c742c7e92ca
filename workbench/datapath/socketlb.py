"""The socket load balancer: sock_addr programs on pod cgroups, frontends and backends in the LB maps.

One compile of bpf/sock.bpf.c per agent; adding a pod attaches the already
loaded programs to its cgroup, adding a service writes map entries.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from workbench.datapath import build
from workbench.lab.model import PROTOCOLS
from workbench.lab.services import Frontend

# program name -> attach type name in bcc.BPFAttachType
SOCK_PROGRAMS = {
    "sock4_connect": "CGROUP_INET4_CONNECT",
    "sock4_sendmsg": "CGROUP_UDP4_SENDMSG",
    "sock4_recvmsg": "CGROUP_UDP4_RECVMSG",
    "sock4_getpeername": "CGROUP_INET4_GETPEERNAME",
}



class SocketLB:
    """The lab's socket load balancer: compiled once, attached per pod cgroup."""

    def __init__(self, lab: str) -> None:
        from bcc import BPF, BPFAttachType

        self.lab = lab
        self.bpf = build.compile_object("sock.bpf.c", lab)
        self._functions = {name: (self.bpf.load_func(name, BPF.CGROUP_SOCK_ADDR,
                                                     attach_type=getattr(BPFAttachType, kind)),
                                  getattr(BPFAttachType, kind))
                           for name, kind in SOCK_PROGRAMS.items()}
        self._pin_programs()

    def _pin_programs(self) -> None:
        """Pin the programs next to the maps so `bpftool` and a restarted agent can find them."""
        from bcc.libbcc import lib

        for name, (fn, _) in self._functions.items():
            path = build.pin_dir(self.lab) / name
            if path.exists():
                path.unlink()
            lib.bpf_obj_pin(fn.fd, str(path).encode())

    def attach(self, cgroup: Path) -> None:
        from bcc import BPF

        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for fn, attach_type in self._functions.values():
                BPF.attach_func(fn, fd, attach_type)
        finally:
            os.close(fd)

    def set_frontends(self, frontends: list[Frontend]) -> None:
        """Write every frontend and its backend slots (slots are dense: 0..count-1)."""
        services, backends = self.bpf["lb4_services"], self.bpf["lb4_backends"]
        for fe in frontends:
            for slot, (_, ip, port) in enumerate(fe.backends):
                backends[backends.Key(fe.svc_id, slot)] = backends.Leaf(build.ipv4_be(ip), socket.htons(port), 0)
            key = services.Key(build.ipv4_be(fe.cluster_ip), socket.htons(fe.port), PROTOCOLS[fe.protocol], 0)
            services[key] = services.Leaf(fe.svc_id, len(fe.backends))

    def frontend_entries(self) -> list[dict[str, Any]]:
        """The lb4_services map as rows (for tests and `bpf lb list`-style views)."""
        import ipaddress

        rows = []
        for key, value in self.bpf["lb4_services"].items():
            rows.append({"address": str(ipaddress.IPv4Address(int(key.address).to_bytes(4, "little"))),
                         "port": socket.ntohs(key.dport), "proto": int(key.proto),
                         "svc_id": int(value.svc_id), "count": int(value.count)})
        return rows

    def close(self) -> None:
        self.bpf.cleanup()
