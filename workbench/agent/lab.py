"""Building a lab from its spec, or adopting the running lab of a dead agent.

Building: the lab's cluster DNS joins the spec (``lab/clusterdns.py``: the
kube-system/kube-dns pod and service), the node and world netns (with the
external hosts' addresses), then the services (``Services.start``), then one
endpoint per pod (netns, veth, cgroup, identity, ipcache entry; the services
are told about each), the service frontends, the hosts and resolv.conf files,
the DNS records file, and last the pods' apps (kube-dns's DNS server among them). Adopting: the same services over the pods, maps and
programs that are still there (the datapath never paused), and the apps
whose process died are started again.
"""

from __future__ import annotations

import json
import os
import select
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from workbench.agent.context import LabContext
from workbench.agent.services import Services
from workbench.datapath import build
from workbench.errors import WorkbenchError
from workbench.lab.clusterdns import DNS_APP, dns_service_ip, resolv_conf, with_cluster_dns
from workbench.lab.dnsrecords import RECORDS_FILE, lab_records, records_json
from workbench.lab.identity import identity_labels
from workbench.lab.ipam import BASE_IPCACHE, AddressPool
from workbench.lab.manifests import PodSpec
from workbench.lab.model import Endpoint, Service, ServicePort
from workbench.lab.services import Frontend, build_frontends, to_model
from workbench.node import state, topology
from workbench.node.processes import app_argv, dns_app_argv, spawn_in_pod

APP_READY_TIMEOUT = 20.0


class PhaseClock:
    """Seconds spent in each build phase, for `lab status` and the bench."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.phases: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.phases[name] = round(time.monotonic() - self.start - sum(self.phases.values()), 3)

    @property
    def total(self) -> float:
        return time.monotonic() - self.start


def join_cgroup(lab: str, name: str) -> None:
    path = state.lab_cgroup(lab) / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.procs").write_text(str(os.getpid()))


def build_lab(ctx: LabContext, start_services: Callable[[LabContext], Services], clock: PhaseClock) -> Services:
    """Create everything of ``ctx.spec`` (plus the lab's cluster DNS); returns the started services."""
    ctx.spec = with_cluster_dns(ctx.spec, ctx.service_cidr)
    for cidr, identity in BASE_IPCACHE.items():
        build.ipcache_set(ctx.maps, cidr, identity)
    clock.mark("maps_and_socket_lb")
    topology.create_node(ctx.lab)
    topology.create_world(ctx.lab, [ctx.pod_cidr, ctx.service_cidr])
    external_ips = [host.ip for host in ctx.spec.external_hosts]
    if external_ips:    # they stay "world" in the ipcache (the 0.0.0.0/0 and 192.0.2.0/24 entries)
        topology.add_external_hosts(ctx.lab, external_ips)
    clock.mark("node")
    services = start_services(ctx)
    clock.mark("services")

    pod_ips, cluster_ips = AddressPool(ctx.pod_cidr), AddressPool(ctx.service_cidr)
    for svc in ctx.spec.services:
        if svc.cluster_ip:
            cluster_ips.reserve(svc.cluster_ip)
    service_ips = [(svc, svc.cluster_ip or cluster_ips.allocate()) for svc in ctx.spec.services]
    pods = [(pod, pod_ips.allocate()) for pod in ctx.spec.pods]
    cidrs = topology.lab_cidrs(ctx.pod_cidr, ctx.service_cidr, external_ips)
    for ep_id, (pod, ip) in enumerate(pods, start=1):
        services.attach_endpoint(create_endpoint(ctx, ep_id, pod, ip, cidrs))
    ctx.frontends = build_frontends(service_ips, pods)
    ctx.lb.set_frontends(ctx.frontends)
    ctx.services = [to_model(svc, ip, ctx.frontends) for svc, ip in service_ips]
    write_hosts_files(ctx)
    write_dns_records(ctx)
    clock.mark("pods")
    start_apps(ctx)
    clock.mark("apps")
    return services


def adopt_lab(ctx: LabContext, start_services: Callable[[LabContext], Services]) -> Services:
    """Take over the lab a dead agent left running, from its state.json."""
    saved = json.loads((ctx.dir / "state.json").read_text())
    ctx.spec = with_cluster_dns(ctx.spec, ctx.service_cidr)
    services = start_services(ctx)
    for data in saved["endpoints"]:
        ep = Endpoint(**{k: v for k, v in data.items() if k in Endpoint.__dataclass_fields__})
        ep.labels = tuple(ep.labels)
        if not Path(f"/run/netns/{ep.netns}").exists():
            raise WorkbenchError(f"cannot adopt lab {ctx.lab}: netns {ep.netns} is gone")
        ctx.endpoints[ep.pod] = ep
        services.attach_endpoint(ep)
    ctx.services = [Service(**{**data, "ports": [ServicePort(**p) for p in data["ports"]]})
                    for data in saved["services"]]
    ctx.frontends = [Frontend(**{**f, "backends": [tuple(b) for b in f["backends"]]})
                     for f in saved.get("frontends", [])]
    ctx.lb.set_frontends(ctx.frontends)
    write_dns_records(ctx)
    start_apps(ctx, only_dead=True)
    return services


def save_state(ctx: LabContext, status: dict[str, Any]) -> None:
    """state.json: what was built, for listings while no agent runs and for adoption."""
    data = {"status": status, "endpoints": [ep.to_dict() for ep in ctx.endpoints.values()],
            "services": [svc.to_dict() for svc in ctx.services],
            "frontends": [asdict(f) for f in ctx.frontends]}
    tmp = ctx.dir / "state.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, ctx.dir / "state.json")


def create_endpoint(ctx: LabContext, ep_id: int, pod: PodSpec, ip: str, cidrs: list[str]) -> Endpoint:
    """The pod's netns, veth, cgroup (with the socket LB), identity and ipcache entry.

    The endpoints map entry is written by the datapath when it attaches the endpoint.
    """
    identity = ctx.identities.allocate(identity_labels(pod.labels, pod.namespace,
                                                       ctx.spec.namespaces.get(pod.namespace, {})))
    ifindex = topology.create_pod_network(ctx.lab, pod.name, ip, cidrs)
    cgroup = state.pod_cgroup(ctx.lab, pod.name)
    cgroup.mkdir(parents=True, exist_ok=True)
    ctx.lb.attach(cgroup)
    build.ipcache_set(ctx.maps, f"{ip}/32", identity.id)
    ep = Endpoint(id=ep_id, pod=pod.name, namespace=pod.namespace, ipv4=ip, identity=identity.id,
                  labels=identity.labels, pod_labels=dict(pod.labels),
                  netns=topology.pod_netns(ctx.lab, pod.name), lxc=topology.lxc_name(ctx.lab, pod.name),
                  ifindex=ifindex, cgroup=str(cgroup), app=pod.app,
                  ports=[p.port for p in pod.ports], owner=pod.owner,
                  named_ports={p.name: (p.port, p.protocol) for p in pod.ports if p.name})
    ctx.endpoints[pod.name] = ep
    return ep


def write_hosts_files(ctx: LabContext) -> None:
    """Each pod's hosts file (localhost and its own name, as the kubelet writes it) and a resolv.conf
    that sends every lookup to the lab's DNS service (search path and ndots as Kubernetes')."""
    nameserver = dns_service_ip(ctx.service_cidr)
    for ep in ctx.endpoints.values():
        topology.write_hosts(ep.netns, [(ep.ipv4, [ep.pod])], resolv_conf(ep.namespace, nameserver))


def dns_records_path(ctx: LabContext) -> Path:
    return ctx.dir / RECORDS_FILE


def write_dns_records(ctx: LabContext) -> None:
    """The names the lab's DNS server answers, replaced atomically (the server re-reads a changed file)."""
    text = records_json(lab_records(ctx.services, ctx.endpoints.values(), ctx.spec.external_hosts))
    tmp = dns_records_path(ctx).with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, dns_records_path(ctx))


def start_apps(ctx: LabContext, only_dead: bool = False) -> None:
    """Start every pod's app (and the world's echo), then wait until all have bound their ports.

    ``only_dead``: skip pods whose cgroup still has a process (adopting a lab).
    """
    pending: dict[int, str] = {}
    world_cg = state.lab_cgroup(ctx.lab) / state.WORLD_CGROUP
    world_cg.mkdir(parents=True, exist_ok=True)
    # The world's echo serves every external host too (on all of its addresses), with their ports.
    world_ports = {(80, "TCP"), (80, "UDP")} | {(port, "TCP") for host in ctx.spec.external_hosts
                                                for port in host.ports}
    jobs: list[tuple[str, str, Path, str, list[tuple[int, str]]]] = [
        ("world", topology.world_netns(ctx.lab), world_cg, "echo", sorted(world_ports))]
    pods = {p.name: p for p in ctx.spec.pods}
    for ep in ctx.endpoints.values():
        if ep.app == "idle":
            continue
        ports = [(p.port, p.protocol) for p in pods[ep.pod].ports] or [(80, "TCP")]
        if ep.app == "echo":   # the echo answers on both protocols of each port, for UDP probes
            ports = sorted({(n, proto) for n, _ in ports for proto in ("TCP", "UDP")})
        jobs.append((ep.pod, ep.netns, Path(ep.cgroup), ep.app, ports))
    for name, netns, cgroup, app, ports in jobs:
        if only_dead and (cgroup / "cgroup.procs").read_text().strip():
            continue
        read_fd, write_fd = os.pipe()
        spawn_in_pod(netns, cgroup, _app_command(ctx, name, app, ports, write_fd), state.pod_log(ctx.lab, name),
                     pass_fds=(write_fd,))
        os.close(write_fd)
        pending[read_fd] = name
    deadline = time.monotonic() + APP_READY_TIMEOUT
    while pending:
        ready, _, _ = select.select(list(pending), [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise WorkbenchError(f"apps did not start within {APP_READY_TIMEOUT:.0f} s: "
                                 f"{', '.join(sorted(pending.values()))} (logs in {state.log_dir(ctx.lab)})")
        for fd in ready:
            name = pending.pop(fd)
            ok = os.read(fd, 16).startswith(b"ready")
            os.close(fd)
            if not ok:
                log = state.pod_log(ctx.lab, name)
                tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                raise WorkbenchError(f"the app of {name} failed to start: {' '.join(tail) or 'no output'}")


def _app_command(ctx: LabContext, name: str, app: str, ports: list[tuple[int, str]], ready_fd: int) -> list[str]:
    if app == DNS_APP:
        return dns_app_argv(name, dns_records_path(ctx), ready_fd)
    argv = app_argv(app, name, ports, ready_fd)
    if name == "world":
        for host in ctx.spec.external_hosts:
            argv += ["--external-host", f"{host.ip}={host.hostname}"]
    return argv
