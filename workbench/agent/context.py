"""What every agent service may read: the lab's name, configuration and live inventory.

One :class:`LabContext` per agent process. The builder (``agent/lab.py``)
fills ``endpoints`` and ``services``; services read them and are told about
changes through :class:`EndpointObserver` calls, in the start order declared
in ``agent/services.py``. Nothing here is untyped, so a service can only
reach another service through the constructor arguments it declares.

Example::

    ctx = LabContext.load("demo")          # reads /run/workbench/demo/config.json
    ctx.endpoint("xwing").identity
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from workbench.agent.flows import ObserveOptions
from workbench.datapath.socketlb import SocketLB
from workbench.lab.identity import IdentityAllocator
from workbench.lab.ipam import DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR
from workbench.lab.manifests import LabSpec
from workbench.lab.model import Endpoint, Service
from workbench.lab.names import check_lab_name, find_endpoint
from workbench.lab.services import Frontend
from workbench.node import state


class EndpointObserver(Protocol):
    """A service that keeps per-endpoint kernel or cache state."""

    def attach_endpoint(self, ep: Endpoint) -> None: ...

    def detach_endpoint(self, ep: Endpoint) -> None: ...

    def close(self) -> None: ...


@dataclass
class LabContext:
    """The lab as the agent's services see it."""

    lab: str
    dir: Path
    spec: LabSpec
    pod_cidr: str
    service_cidr: str
    observe: ObserveOptions
    identities: IdentityAllocator
    lb: SocketLB
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)
    frontends: list[Frontend] = field(default_factory=list)
    fqdn_min_ttl: int = 0            # seconds; the DNS service's least TTL for learnt names

    @classmethod
    def load(cls, lab: str, lb: SocketLB) -> LabContext:
        """The context of ``lab`` from its config.json; ``lb`` is the lab's compiled socket LB."""
        directory = state.state_dir(check_lab_name(lab))
        config = json.loads((directory / "config.json").read_text())
        return cls(lab=lab, dir=directory, spec=LabSpec.from_dict(config["spec"]),
                   pod_cidr=config.get("pod_cidr", DEFAULT_POD_CIDR),
                   service_cidr=config.get("service_cidr", DEFAULT_SERVICE_CIDR),
                   observe=ObserveOptions.from_config(config.get("observe")),
                   identities=IdentityAllocator(directory / "identities.json"), lb=lb,
                   fqdn_min_ttl=int((config.get("dns") or {}).get("min_ttl", 0)))

    @property
    def maps(self) -> Any:
        """The BCC object that declares the lab's shared pinned maps (ipcache, endpoints, LB)."""
        return self.lb.bpf

    def endpoint(self, pod: str) -> Endpoint:
        """The endpoint of a pod by name (``deploy/NAME`` picks the first replica)."""
        return find_endpoint(list(self.endpoints.values()), pod)
