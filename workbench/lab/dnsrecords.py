"""The lab's DNS records: service, pod and external-host names -> A records with TTL (pure).

The agent writes them to ``dns-records.json`` in the lab's state directory
(``records_json``); the kube-dns pod's server (``workbench/node/dnsapp.py``)
reads that file again whenever it changes. Names are lowercase, without the
trailing dot:

- ``<service>.<namespace>.svc.cluster.local`` -> the ClusterIP, TTL 30 s;
- ``<a-b-c-d>.<namespace>.pod.cluster.local`` -> the pod IP a.b.c.d, TTL 30 s;
- an ExternalHost's ``hostname`` -> its ``ip``, TTL ``spec.ttl``.

Example::

    >>> from workbench.lab.model import Service
    >>> lab_records([Service("deathstar", "default", "10.96.0.11", [], {})], [], [])
    {'deathstar.default.svc.cluster.local': [('10.96.0.11', 30)]}
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from workbench.lab.manifests import CLUSTER_DOMAIN, ExternalHostSpec
from workbench.lab.model import Endpoint, Service

CLUSTER_TTL = 30                     # CoreDNS's kubernetes plugin default
RECORDS_FILE = "dns-records.json"    # in the lab's state directory

Records = dict[str, list[tuple[str, int]]]


def service_name(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"


def pod_name(ipv4: str, namespace: str) -> str:
    return f"{ipv4.replace('.', '-')}.{namespace}.pod.{CLUSTER_DOMAIN}"


def lab_records(services: Iterable[Service], endpoints: Iterable[Endpoint],
                external_hosts: Iterable[ExternalHostSpec]) -> Records:
    """Every name the lab's DNS service answers, with its A records as (ip, ttl)."""
    records: Records = {}

    def add(name: str, ip: str, ttl: int) -> None:
        entries = records.setdefault(name.lower(), [])
        if (ip, ttl) not in entries:
            entries.append((ip, ttl))

    for svc in services:
        add(service_name(svc.name, svc.namespace), svc.cluster_ip, CLUSTER_TTL)
    for ep in endpoints:
        add(pod_name(ep.ipv4, ep.namespace), ep.ipv4, CLUSTER_TTL)
    for host in external_hosts:
        add(host.hostname, host.ip, host.ttl)
    return records


def records_json(records: Records) -> str:
    """The records file: ``{"records": {name: [{"ip": ..., "ttl": ...}, ...]}}``."""
    return json.dumps({"records": {name: [{"ip": ip, "ttl": ttl} for ip, ttl in entries]
                                   for name, entries in sorted(records.items())}}, indent=1)
