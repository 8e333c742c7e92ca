"""What the flow store knows about the lab: endpoints, identities, services, DNS names.

The agent owns the truth and calls :meth:`EnrichmentContext.update` whenever a
pod, identity or service changes, and whenever its DNS proxy learns which names
an address answers to (Hubble's ``source_names`` / ``destination_names``). The context turns the model objects into
sorted lookup arrays once per update, so that enriching a batch of a hundred
thousand events is a few ``np.searchsorted`` calls, not a dict lookup per event.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from workbench.lab.model import RESERVED_IDENTITIES, Endpoint, Identity, Service


def ip_to_int(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


@dataclass
class _Tables:
    """Immutable lookup arrays; a new one replaces the old on update (readers never lock)."""

    version: int = 0
    ep_ips: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))      # sorted
    ep_rows: list[Endpoint] = field(default_factory=list)                           # parallel to ep_ips
    identity_labels: dict[int, tuple[str, ...]] = field(default_factory=dict)
    svc_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))    # sorted ip<<16|port
    svc_names: list[str] = field(default_factory=list)                              # parallel to svc_keys
    name_ips: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))    # sorted
    name_sets: list[tuple[str, ...]] = field(default_factory=list)                  # parallel to name_ips


def dns_name(name: str) -> str:
    """A DNS name as Hubble's name lists write it: lower case, no trailing dot.

    Example::

        >>> dns_name("API.GitHub.com.")
        'api.github.com'
    """
    return name.strip().rstrip(".").lower()


class EnrichmentContext:
    """Endpoints, identities and services the store enriches flows with.

    Example::

        >>> from workbench.lab.model import Endpoint
        >>> ctx = EnrichmentContext(node_name="demo")
        >>> ctx.update(endpoints=[Endpoint(1, "xwing", "default", "10.0.0.5", 258,
        ...     ("k8s:class=xwing",), {"class": "xwing"}, "wb-demo-xwing", "lxc1")])
        >>> ctx.pods
        ['default/xwing']
    """

    def __init__(self, node_name: str = "", endpoints: Iterable[Endpoint] = (),
                 identities: Iterable[Identity] = (), services: Iterable[Service] = ()) -> None:
        self.node_name = node_name
        self._lock = threading.Lock()
        self._endpoints: list[Endpoint] = []
        self._identities: list[Identity] = []
        self._services: list[Service] = []
        self._names: dict[int, tuple[str, ...]] = {}
        self.tables = _Tables()
        self.update(endpoints=list(endpoints), identities=list(identities), services=list(services))

    def update(self, *, endpoints: Iterable[Endpoint] | None = None,
               identities: Iterable[Identity] | None = None,
               services: Iterable[Service] | None = None,
               names: Mapping[str, Iterable[str]] | None = None) -> None:
        """Replace any of the four sets (None keeps the current one) and rebuild the lookups.

        ``names``: IP -> the DNS names the agent learned for it (``{"192.0.2.20":
        ("api.github.com",)}``); every row enriched afterwards carries them in
        ``src_names`` / ``dst_names``. Names are stored as :func:`dns_name` writes them.
        """
        with self._lock:
            if endpoints is not None:
                self._endpoints = list(endpoints)
            if identities is not None:
                self._identities = list(identities)
            if services is not None:
                self._services = list(services)
            if names is not None:
                self._names = {}
                self._merge_names(names)
            self.tables = self._build(self.tables.version + 1)

    def add_names(self, names: Mapping[str, Iterable[str]]) -> None:
        """Add names to the IP -> names mapping (what a DNS answer teaches), keeping those already known.

        Example::

            >>> ctx = EnrichmentContext()
            >>> ctx.add_names({"192.0.2.20": ["api.github.com."]})
            >>> ctx.add_names({"192.0.2.20": ["www.github.com"]})
            >>> ctx.names["192.0.2.20"]
            ('api.github.com', 'www.github.com')
        """
        with self._lock:
            if self._merge_names(names):
                self.tables = self._build(self.tables.version + 1)

    def _merge_names(self, names: Mapping[str, Iterable[str]]) -> bool:
        """Union ``names`` into the mapping (caller holds the lock); True when anything changed."""
        changed = False
        for ip, learned in names.items():
            key = ip_to_int(ip)
            merged = tuple(sorted(set(self._names.get(key, ())) | {dns_name(n) for n in learned if dns_name(n)}))
            if merged != self._names.get(key, ()):
                self._names[key] = merged
                changed = True
        return changed

    @property
    def names(self) -> dict[str, tuple[str, ...]]:
        """IP -> the DNS names known for it (a copy)."""
        return {str(ipaddress.IPv4Address(ip)): names for ip, names in self._names.items() if names}

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    @property
    def pods(self) -> list[str]:
        """"namespace/pod" of every endpoint, sorted."""
        return sorted(f"{ep.namespace}/{ep.pod}" for ep in self._endpoints)

    def _build(self, version: int) -> _Tables:
        eps = sorted(self._endpoints, key=lambda ep: ip_to_int(ep.ipv4))
        ep_ips = np.array([ip_to_int(ep.ipv4) for ep in eps], dtype=np.uint32)
        labels: dict[int, tuple[str, ...]] = dict(RESERVED_IDENTITIES)
        for ep in eps:
            labels.setdefault(ep.identity, tuple(ep.labels))
        for ident in self._identities:
            labels[ident.id] = tuple(ident.labels)
        svc: dict[int, str] = {}
        by_pod = {(ep.namespace, ep.pod): ep for ep in eps}
        for service in self._services:
            for port in service.ports:
                svc[(ip_to_int(service.cluster_ip) << 16) | port.port] = service.name
                for backend in service.backends:
                    backend_ep = by_pod.get((service.namespace, backend))
                    if backend_ep is not None:
                        svc[(ip_to_int(backend_ep.ipv4) << 16) | port.target_port] = service.name
        keys = sorted(svc)
        name_ips = sorted(ip for ip, names in self._names.items() if names)
        return _Tables(version=version, ep_ips=ep_ips, ep_rows=eps, identity_labels=labels,
                       svc_keys=np.array(keys, dtype=np.uint64), svc_names=[svc[k] for k in keys],
                       name_ips=np.array(name_ips, dtype=np.uint32), name_sets=[self._names[ip] for ip in name_ips])


def lookup_sorted(keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of each value in the sorted ``keys``, -1 where absent (vectorised)."""
    if len(keys) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    pos = np.searchsorted(keys, values)
    pos_clipped = np.minimum(pos, len(keys) - 1)
    return np.where(keys[pos_clipped] == values, pos_clipped, -1)
