"""ClusterIP services: which pods back which frontend (pure; the kernel side is datapath/socketlb.py)."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.lab.manifests import PodSpec, ServiceSpec
from workbench.lab.model import Endpoint, Service, ServicePort


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A Service selector matches a pod when every key=value is among its labels (empty selects none)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def resolve_target_port(port: int | str, pod: PodSpec | Endpoint, protocol: str) -> int | None:
    """A numeric targetPort as is; a named one through the pod's container ports."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    if isinstance(pod, PodSpec):
        for cp in pod.ports:
            if cp.name == port and cp.protocol == protocol:
                return cp.port
    return None


@dataclass
class Frontend:
    """One (ClusterIP, port, protocol) with its backends as (pod, ip, port)."""

    svc_id: int
    service: str
    cluster_ip: str
    port: int
    protocol: str
    backends: list[tuple[str, str, int]]


def build_frontends(services: list[tuple[ServiceSpec, str]], pods: list[tuple[PodSpec, str]]) -> list[Frontend]:
    """Services with their ClusterIPs, pods with their IPs -> frontends with their backends."""
    frontends: list[Frontend] = []
    for svc, cluster_ip in services:
        for sp in svc.ports:
            backends = []
            for pod, ip in pods:
                if pod.namespace != svc.namespace or not selects(svc.selector, pod.labels):
                    continue
                target = resolve_target_port(sp.target_port, pod, sp.protocol)
                if target is not None:
                    backends.append((pod.name, ip, target))
            frontends.append(Frontend(len(frontends) + 1, f"{svc.namespace}/{svc.name}", cluster_ip, sp.port,
                                      sp.protocol, backends))
    return frontends


def to_model(svc: ServiceSpec, cluster_ip: str, frontends: list[Frontend]) -> Service:
    mine = [f for f in frontends if f.service == f"{svc.namespace}/{svc.name}"]
    ports = [ServicePort(sp.port, f.backends[0][2] if f.backends else
                         (sp.target_port if isinstance(sp.target_port, int) else 0), sp.protocol, sp.name)
             for sp, f in zip(svc.ports, mine, strict=True)]
    backends = sorted({pod for f in mine for pod, _, _ in f.backends})
    return Service(svc.name, svc.namespace, cluster_ip, ports, dict(svc.selector), backends)
