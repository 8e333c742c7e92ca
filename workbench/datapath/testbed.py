"""A minimal node + pods topology for exercising the datapath alone (tests, bench).

Not the lab (workbench.lab builds that from manifests): just a node netns and
pod netns joined by veth pairs, Cilium-style addressing (pod /32 on eth0, a
link-local gateway 169.254.1.1 answered by the node-side lxc), /32 routes and
forwarding in the node netns only, and ipcache/endpoints entries written
directly. Everything lives in ``wb-<name>-*`` namespaces; :meth:`Testbed.destroy`
removes all of it, pins included.

Example::

    >>> with Testbed.create("t1a2b3", {"a": 256, "b": 257}) as tb:   # doctest: +SKIP
    ...     tb.datapath.policy_writer().apply([], set())
"""

from __future__ import annotations

import ipaddress
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute

from workbench.datapath import build
from workbench.datapath.loader import Datapath
from workbench.lab.model import Endpoint
from workbench.node import netlink

GATEWAY = "169.254.1.1"
POD_CIDR = "10.77.0.0/16"


def _sysctl(netns: str, path: str, value: str) -> None:
    # /proc/sys/net resolves the netns of the opening thread
    with netlink.in_netns(netns):
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)


@dataclass
class Testbed:
    __test__ = False  # not a pytest test class despite the name

    name: str
    node: str
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    datapath: Any = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _sockets: list[socket.socket] = field(default_factory=list)

    @classmethod
    @netlink.off_event_loop
    def create(cls, name: str, pods: dict[str, int], *, attach: bool = True,
               datapath_options: dict[str, Any] | None = None) -> Testbed:
        """Node netns ``wb-<name>-node`` plus one pod netns per entry of ``pods`` (pod -> identity)."""
        tb = cls(name=name, node=f"wb-{name}-node")
        try:
            netlink.create_netns(tb.node)
            _sysctl(tb.node, "net/ipv4/ip_forward", "1")
            for n, (pod, identity) in enumerate(pods.items()):
                tb._add_pod(pod, identity, n)
            if attach:
                tb.datapath = Datapath(name, tb.node, **(datapath_options or {}))
                for ep in tb.endpoints.values():
                    build.ipcache_set(tb.datapath.bpf, f"{ep.ipv4}/32", ep.identity)
                    tb.datapath.attach_endpoint(ep)
        except BaseException:
            tb.destroy()
            raise
        return tb

    def _add_pod(self, pod: str, identity: int, n: int) -> None:
        ns = f"wb-{self.name}-{pod}"
        lxc = f"lxc{self.name[-5:]}{n}"[:15]
        ip = str(ipaddress.IPv4Network(POD_CIDR)[n + 10])
        netlink.create_netns(ns)
        with IPRoute(netns=self.node) as ipr:
            ipr.link("add", ifname=lxc, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
            index = netlink.link_index(ipr, lxc)
            ipr.link("set", index=index, state="up")
            ipr.addr("add", index=index, address=GATEWAY, prefixlen=32)
            ipr.route("add", dst=f"{ip}/32", oif=index, scope=253)
        with IPRoute(netns=ns) as ipr:
            eth0 = netlink.link_index(ipr, "eth0")
            ipr.addr("add", index=eth0, address=ip, prefixlen=32)
            ipr.link("set", index=eth0, state="up")
            ipr.route("add", dst=f"{GATEWAY}/32", oif=eth0, scope=253)
            ipr.route("add", dst=POD_CIDR, gateway=GATEWAY, oif=eth0)
        self.endpoints[pod] = Endpoint(
            id=n + 1, pod=pod, namespace="default", ipv4=ip, identity=identity,
            labels=(f"k8s:app={pod}",), pod_labels={"app": pod}, netns=ns, lxc=lxc, ifindex=index)

    # -- traffic -----------------------------------------------------------------------------
    def socket_in(self, pod: str, kind: int) -> socket.socket:
        """A socket created inside the pod's netns (it stays there)."""
        with netlink.in_netns(self.endpoints[pod].netns):
            return socket.socket(socket.AF_INET, kind)

    def serve(self, pod: str, port: int, proto: str = "tcp") -> None:
        """An echo server (thread of this process) on ``pod``:``port``."""
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        srv = self.socket_in(pod, kind)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        self._sockets.append(srv)
        if proto == "tcp":
            srv.listen(64)
            target = _tcp_echo
        else:
            target = _udp_echo
        t = threading.Thread(target=target, args=(srv,), daemon=True)
        t.start()
        self._threads.append(t)

    def tcp(self, src: str, dst: str, port: int, timeout: float = 1.0, source_ip: str | None = None) -> bool:
        """True when a TCP connect + echo round trip from src to dst:port works."""
        s = self.socket_in(src, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            if source_ip:
                s.bind((source_ip, 0))
            s.connect((self.endpoints[dst].ipv4, port))
            s.sendall(b"ping")
            return s.recv(16) == b"ping"
        except OSError:
            return False
        finally:
            s.close()

    def udp(self, src: str, dst: str, port: int, timeout: float = 1.0) -> bool:
        """True when a UDP datagram to dst:port comes back echoed."""
        s = self.socket_in(src, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        try:
            s.sendto(b"ping", (self.endpoints[dst].ipv4, port))
            return s.recvfrom(16)[0] == b"ping"
        except OSError:
            return False
        finally:
            s.close()

    def ping(self, src: str, dst: str, timeout: float = 1.0) -> bool:
        """True when an ICMP echo request from src to dst gets its reply (raw socket, no ping binary)."""
        with netlink.in_netns(self.endpoints[src].netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.settimeout(timeout)
        ident = random.randrange(1, 0xFFFF)  # a new id is a new "connection" for conntrack
        header = bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + (1).to_bytes(2, "big")
        packet = header[:2] + _checksum(header + b"wbping").to_bytes(2, "big") + header[4:] + b"wbping"
        try:
            s.sendto(packet, (self.endpoints[dst].ipv4, 0))
            while True:
                data, _ = s.recvfrom(1500)
                icmp = data[(data[0] & 0x0F) * 4:]
                if icmp[0] == 0 and int.from_bytes(icmp[4:6], "big") == ident:
                    return True
        except OSError:
            return False
        finally:
            s.close()

    @contextmanager
    def connection(self, src: str, dst: str, port: int, timeout: float = 1.0) -> Iterator[socket.socket]:
        """A connected TCP socket from src to dst:port, for tests that keep a flow open."""
        s = self.socket_in(src, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((self.endpoints[dst].ipv4, port))
            yield s
        finally:
            s.close()

    # -- teardown --------------------------------------------------------------------------
    @netlink.off_event_loop
    def destroy(self) -> None:
        """Remove netns (veths and filters go with them), close the datapath, unpin its maps."""
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
            except OSError:
                pass
            s.close()
        if self.datapath is not None:
            self.datapath.close()
            self.datapath = None
        for ep in self.endpoints.values():
            netlink.remove_netns(ep.netns)
        netlink.remove_netns(self.node)
        build.remove_pins(self.name)

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp_echo(srv: socket.socket) -> None:
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        threading.Thread(target=_echo_conn, args=(conn,), daemon=True).start()


def _echo_conn(conn: socket.socket) -> None:
    with conn:
        try:
            while data := conn.recv(4096):
                conn.sendall(data)
        except OSError:
            pass


def _udp_echo(srv: socket.socket) -> None:
    while True:
        try:
            data, peer = srv.recvfrom(4096)
            if peer is None:  # shut down
                return
            srv.sendto(data, peer)
        except OSError:
            return
