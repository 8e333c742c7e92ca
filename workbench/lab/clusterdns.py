"""The lab's cluster DNS: the kube-system/kube-dns pod and service every lab gets (pure).

As in a Kubernetes cluster, pods resolve names through a ClusterIP service
``kube-system/kube-dns`` on the service CIDR's ``.10`` (10.96.0.10 in the
default 10.96.0.0/16), ports 53/UDP (``dns``) and 53/TCP (``dns-tcp``), backed
by one pod ``kube-dns`` labelled ``k8s-app: kube-dns``, so that policies
written for Cilium (``k8s:io.kubernetes.pod.namespace: kube-system`` +
``k8s-app: kube-dns``) select it. The agent adds them to the lab's spec
(``with_cluster_dns``); manifests may not define them (``manifests.py``
refuses a pod named kube-dns and the service kube-system/kube-dns).

Example::

    >>> from workbench.lab.manifests import LabSpec
    >>> spec = with_cluster_dns(LabSpec(), "10.96.0.0/16")
    >>> (spec.pods[-1].name, spec.services[-1].cluster_ip)
    ('kube-dns', '10.96.0.10')
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from workbench.errors import ValidationError
from workbench.lab.manifests import (
    CLUSTER_DOMAIN,
    KUBE_DNS_NAME,
    KUBE_DNS_NAMESPACE,
    NAMESPACE_NAME_LABEL,
    ContainerPort,
    LabSpec,
    PodSpec,
    ServicePortSpec,
    ServiceSpec,
)

__all__ = ["CLUSTER_DOMAIN", "KUBE_DNS_LABELS", "KUBE_DNS_NAME", "KUBE_DNS_NAMESPACE", "DNS_APP",
           "dns_service_ip", "resolv_conf", "with_cluster_dns"]

KUBE_DNS_LABELS = {"k8s-app": KUBE_DNS_NAME}
DNS_APP = "dns"                           # the built-in app of the kube-dns pod (workbench/node/dnsapp.py)
KUBE_DNS_IMAGE = "registry.k8s.io/coredns/coredns"
DNS_SERVICE_OFFSET = 10                   # the Kubernetes convention: the service CIDR's .10
DNS_PORT = 53


def dns_service_ip(service_cidr: str) -> str:
    """The ClusterIP of kube-dns: the ``.10`` of the service CIDR (10.96.0.10 for 10.96.0.0/16)."""
    return str(ipaddress.IPv4Network(service_cidr).network_address + DNS_SERVICE_OFFSET)


def kube_dns_pod() -> PodSpec:
    return PodSpec(KUBE_DNS_NAME, KUBE_DNS_NAMESPACE, dict(KUBE_DNS_LABELS), KUBE_DNS_IMAGE,
                   [ContainerPort(DNS_PORT, "UDP", "dns"), ContainerPort(DNS_PORT, "TCP", "dns-tcp")], DNS_APP)


def kube_dns_service(service_cidr: str) -> ServiceSpec:
    return ServiceSpec(KUBE_DNS_NAME, KUBE_DNS_NAMESPACE, dict(KUBE_DNS_LABELS),
                       [ServicePortSpec(DNS_PORT, DNS_PORT, "UDP", "dns"),
                        ServicePortSpec(DNS_PORT, DNS_PORT, "TCP", "dns-tcp")],
                       dns_service_ip(service_cidr))


def with_cluster_dns(spec: LabSpec, service_cidr: str) -> LabSpec:
    """``spec`` plus namespace kube-system, the kube-dns pod (last, so the manifests' pods keep their
    addresses and identities) and the kube-dns service on the service CIDR's ``.10``.

    Idempotent. Raises ValidationError when a manifest's service asks for that address.
    """
    if any(p.name == KUBE_DNS_NAME and p.namespace == KUBE_DNS_NAMESPACE for p in spec.pods):
        return spec
    address = dns_service_ip(service_cidr)
    for svc in spec.services:
        if svc.cluster_ip == address:
            raise ValidationError(f"service {svc.namespace}/{svc.name}: clusterIP {address} is the address of "
                                  f"the lab's DNS service {KUBE_DNS_NAMESPACE}/{KUBE_DNS_NAME}; choose another")
    namespaces = dict(spec.namespaces)
    namespaces.setdefault(KUBE_DNS_NAMESPACE, {NAMESPACE_NAME_LABEL: KUBE_DNS_NAMESPACE})
    return replace(spec, namespaces=namespaces, pods=[*spec.pods, kube_dns_pod()],
                   services=[*spec.services, kube_dns_service(service_cidr)])


def resolv_conf(namespace: str, nameserver: str) -> str:
    """A pod's /etc/resolv.conf as the kubelet writes it for dnsPolicy ClusterFirst."""
    search = " ".join([f"{namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN])
    return f"search {search}\nnameserver {nameserver}\noptions ndots:5\n"
