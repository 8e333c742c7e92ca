"""Who is behind an address: the lab's pods by IP (kept current by endpoint events) and the ipcache.

The proxies (HTTP and DNS) see connections by address; their decisions need the client's endpoint
and the identities of both ends. :class:`PodAddresses` is the endpoint observer they share.
"""

from __future__ import annotations

import threading
from typing import Any

from workbench.datapath import build
from workbench.lab.model import ID_WORLD, Endpoint


class PodAddresses:
    """Endpoint observer: pod IP -> endpoint, and any address -> its identity (ipcache; world if unknown)."""

    def __init__(self, maps: Any) -> None:
        self._maps = maps
        self._address_lock = threading.Lock()
        self._by_ip: dict[str, Endpoint] = {}

    def attach_endpoint(self, ep: Endpoint) -> None:
        with self._address_lock:
            self._by_ip[ep.ipv4] = ep

    def detach_endpoint(self, ep: Endpoint) -> None:
        with self._address_lock:
            self._by_ip.pop(ep.ipv4, None)

    def endpoint_at(self, ip: str) -> Endpoint | None:
        """The pod with address ``ip``, or None (not a pod of the lab)."""
        return self._by_ip.get(ip)

    def identity_of(self, ip: str) -> int:
        """A pod's identity, else what the ipcache says (fqdn and CIDR identities), else world."""
        ep = self._by_ip.get(ip)
        if ep is not None:
            return ep.identity
        found = build.ipcache_lookup(self._maps, ip)
        return ID_WORLD if found is None else found
