"""The lab's network: a node netns, one netns per pod, a "world" netns.

Safety (docs/safety.md): nothing here touches the machine's own netns. The node
netns has no link to it at all; forwarding is enabled inside the node netns
only; pods route only the lab's CIDRs, through a link-local gateway address
that sits on every lxc device (the node answers ARP for it), so a pod can
never reach anything but the lab.

    pod netns  eth0 10.244.0.x/32 --veth-- lxc<hash> (169.254.1.1/32)  node netns
    world netns eth0 192.0.2.10/24 --veth-- world0 192.0.2.1/24         node netns
                 + one /32 per external host (192.0.2.x, 198.51.100.x; the node routes
                   198.51.100.0/24 to 192.0.2.10 when a host uses it)

Runs in the agent (pyroute2 is fine there: no asyncio loop).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from pyroute2 import IPRoute

from workbench.lab.ipam import EXTERNAL_CIDR, POD_GATEWAY, WORLD_CIDR, WORLD_GATEWAY, WORLD_HOST
from workbench.node import netlink, system
from workbench.node.inventory import ETC_NETNS

WORLD_LINK = "world0"


def netns_prefix(lab: str) -> str:
    """Every netns of the lab starts with this (lab names contain no '-', so it is unambiguous)."""
    return f"{system.NETNS_PREFIX}{lab}-"


def node_netns(lab: str) -> str:
    return f"{netns_prefix(lab)}node"


def world_netns(lab: str) -> str:
    return f"{netns_prefix(lab)}world"


def pod_netns(lab: str, pod: str) -> str:
    return f"{netns_prefix(lab)}{pod}"


def lxc_name(lab: str, pod: str) -> str:
    """lxc + 11 hex chars: unique per (lab, pod) and within the 15-char interface name limit."""
    return "lxc" + hashlib.sha256(f"{lab}/{pod}".encode()).hexdigest()[:11]


def _sysctl(netns: str, key: str, value: str) -> None:
    # /proc/sys/net follows the netns of the calling thread, which in_netns switches.
    with netlink.in_netns(netns):
        Path("/proc/sys", *key.split(".")).write_text(value)


def _create_ipv4_only_netns(name: str) -> None:
    """A netns whose new devices get no IPv6: the lab is IPv4, and router solicitations and
    DAD packets would only be noise in the flows."""
    netlink.create_netns(name)
    with netlink.in_netns(name):
        for key in ("all", "default"):
            Path(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6").write_text("1")


def create_node(lab: str) -> None:
    """The node netns with forwarding on (inside it only)."""
    name = node_netns(lab)
    _create_ipv4_only_netns(name)
    _sysctl(name, "net.ipv4.ip_forward", "1")


def _node_side_veth(ipr: IPRoute, name: str, peer_netns: str, address: str, prefixlen: int) -> int:
    """A veth ``name`` in the node whose peer is ``eth0`` of ``peer_netns``, addressed and up (idempotent)."""
    if not ipr.link_lookup(ifname=name):
        ipr.link("add", ifname=name, kind="veth", peer={"ifname": "eth0", "net_ns_fd": peer_netns})
    index = netlink.link_index(ipr, name)
    ipr.addr("replace", index=index, address=address, prefixlen=prefixlen)
    ipr.link("set", index=index, state="up")
    return index


def create_world(lab: str, routed_cidrs: list[str]) -> None:
    """The lab's stand-in for the internet: 192.0.2.10 behind the node's world0 link."""
    node, world = node_netns(lab), world_netns(lab)
    _create_ipv4_only_netns(world)
    with IPRoute(netns=node) as ipr:
        _node_side_veth(ipr, WORLD_LINK, world, WORLD_GATEWAY, 24)
    with IPRoute(netns=world) as ipr:
        index = netlink.link_index(ipr, "eth0")
        ipr.addr("replace", index=index, address=WORLD_HOST, prefixlen=24)
        ipr.link("set", index=index, state="up")
        for cidr in routed_cidrs:
            ipr.route("replace", dst=cidr, gateway=WORLD_GATEWAY)


def add_external_hosts(lab: str, addresses: Iterable[str]) -> None:
    """The lab's external hosts as addresses of the world netns (idempotent).

    Addresses in 198.51.100.0/24 are outside the world link's /24, so the node
    gets a route for that range through the world host.
    """
    addresses = list(addresses)
    with IPRoute(netns=world_netns(lab)) as ipr:
        index = netlink.link_index(ipr, "eth0")
        for address in addresses:
            ipr.addr("replace", index=index, address=address, prefixlen=32)
    if _uses_external_cidr(addresses):
        with IPRoute(netns=node_netns(lab)) as ipr:
            ipr.route("replace", dst=EXTERNAL_CIDR, gateway=WORLD_HOST, oif=netlink.link_index(ipr, WORLD_LINK))


def _uses_external_cidr(addresses: Iterable[str]) -> bool:
    network = ipaddress.IPv4Network(EXTERNAL_CIDR)
    return any(ipaddress.IPv4Address(a) in network for a in addresses)


def create_pod_network(lab: str, pod: str, ipv4: str, routed_cidrs: list[str]) -> int:
    """Pod netns + veth pair + routes; returns the lxc ifindex in the node netns."""
    node, netns, lxc = node_netns(lab), pod_netns(lab, pod), lxc_name(lab, pod)
    _create_ipv4_only_netns(netns)
    with IPRoute(netns=node) as ipr:
        index = _node_side_veth(ipr, lxc, netns, POD_GATEWAY, 32)
        ipr.route("replace", dst=f"{ipv4}/32", oif=index, scope=253)   # scope link: on this veth
    with IPRoute(netns=netns) as ipr:
        eth0 = netlink.link_index(ipr, "eth0")
        ipr.addr("replace", index=eth0, address=ipv4, prefixlen=32)
        ipr.link("set", index=eth0, state="up")
        ipr.route("replace", dst=f"{POD_GATEWAY}/32", oif=eth0, scope=253)
        for cidr in routed_cidrs:
            ipr.route("replace", dst=cidr, gateway=POD_GATEWAY, oif=eth0, prefsrc=ipv4)
    return index


def remove_pod_network(lab: str, pod: str) -> None:
    """The netns goes, and its veth pair with it."""
    netlink.remove_netns(pod_netns(lab, pod))
    remove_hosts(pod_netns(lab, pod))


def lab_cidrs(pod_cidr: str, service_cidr: str, external_hosts: Iterable[str] = ()) -> list[str]:
    """The only destinations a pod has routes for: 198.51.100.0/24 too when an external host is there."""
    return [pod_cidr, service_cidr, WORLD_CIDR] + ([EXTERNAL_CIDR] if _uses_external_cidr(external_hosts) else [])


def write_hosts(netns: str, entries: list[tuple[str, list[str]]], resolv_conf: str) -> None:
    """/etc/netns/<netns>/hosts and resolv.conf, which `ip netns exec` bind-mounts over /etc.

    A pod's hosts file holds what the kubelet writes (localhost and the pod's own
    name); every other name comes from the lab's DNS service named in ``resolv_conf``.
    """
    directory = ETC_NETNS / netns
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["# Kubernetes-managed hosts file (eBPF Workbench lab).", "127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{address}\t{' '.join(names)}" for address, names in entries]
    (directory / "hosts").write_text("\n".join(lines) + "\n")
    (directory / "resolv.conf").write_text(resolv_conf)


def remove_hosts(netns: str) -> None:
    directory = ETC_NETNS / netns
    for child in directory.glob("*"):
        child.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass
