"""Address management: pod IPs from the pod CIDR, ClusterIPs from the service CIDR.

Example::

    >>> pool = AddressPool("10.244.0.0/16")
    >>> pool.allocate()
    '10.244.0.10'
"""

from __future__ import annotations

import ipaddress

from workbench.errors import ValidationError
from workbench.lab.model import ID_HOST, ID_WORLD

DEFAULT_POD_CIDR = "10.244.0.0/16"
DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
WORLD_CIDR = "192.0.2.0/24"
WORLD_HOST = "192.0.2.10"
WORLD_GATEWAY = "192.0.2.1"     # the node's end of the world link
# ExternalHost addresses (manifests.py): in the world netns, on the documentation ranges TEST-NET-1 and -2.
EXTERNAL_CIDR = "198.51.100.0/24"
EXTERNAL_HOST_CIDRS = (WORLD_CIDR, EXTERNAL_CIDR)
POD_GATEWAY = "169.254.1.1"     # on every lxc in the node netns; pods route lab CIDRs through it
FIRST_HOST_OFFSET = 10          # low addresses stay free, as on a real node
# Prefixes the agent maps itself in the ipcache (prefix -> identity); policy CIDR identities go on top.
BASE_IPCACHE = {"0.0.0.0/0": ID_WORLD, WORLD_CIDR: ID_WORLD, f"{WORLD_GATEWAY}/32": ID_HOST,
                f"{POD_GATEWAY}/32": ID_HOST}


class AddressPool:
    """Sequential allocator over one IPv4 network; explicit addresses may be reserved."""

    def __init__(self, cidr: str, first_offset: int = FIRST_HOST_OFFSET) -> None:
        try:
            self.network = ipaddress.IPv4Network(cidr)
        except ValueError as err:
            raise ValidationError(f"{cidr!r} is not an IPv4 network: {err}") from None
        if self.network.num_addresses < first_offset + 2:
            raise ValidationError(f"{cidr} is too small for a lab")
        self._next = first_offset
        self._used: set[str] = set()

    def reserve(self, address: str) -> str:
        ip = ipaddress.IPv4Address(address)
        if ip not in self.network:
            raise ValidationError(f"{address} is not inside {self.network}")
        if address in self._used:
            raise ValidationError(f"{address} is already in use")
        self._used.add(address)
        return address

    def allocate(self) -> str:
        while True:
            if self._next >= self.network.num_addresses - 1:
                raise ValidationError(f"{self.network} has no free addresses left")
            address = str(self.network.network_address + self._next)
            self._next += 1
            if address not in self._used:
                self._used.add(address)
                return address


def check_lab_cidrs(pod_cidr: str, service_cidr: str) -> None:
    """The lab's ranges must be private and must not overlap each other or the world."""
    nets = {}
    for label, cidr in (("pod CIDR", pod_cidr), ("service CIDR", service_cidr)):
        try:
            net = ipaddress.IPv4Network(cidr)
        except ValueError as err:
            raise ValidationError(f"{label} {cidr!r} is not an IPv4 network: {err}") from None
        if not net.is_private or net.prefixlen < 8:
            raise ValidationError(f"{label} {cidr} must be a private range of /8 or smaller")
        nets[label] = net
    pod, svc = nets["pod CIDR"], nets["service CIDR"]
    pairs = [(pod, svc, "pod and service CIDRs")]
    for cidr in EXTERNAL_HOST_CIDRS:      # the world's ranges, where external hosts live
        world = ipaddress.IPv4Network(cidr)
        pairs += [(pod, world, "pod CIDR and the lab world"), (svc, world, "service CIDR and the lab world")]
    for a, b, what in pairs:
        if a.overlaps(b):
            raise ValidationError(f"the {what} overlap ({a}, {b})")
