"""The agent's services, their dependencies and their start order, in one place.

    Datapath  (TC programs on every lxc, the pinned maps)      needs: the node netns
    PolicyService(ctx, datapath)                               writes the policy map
    FlowService(ctx, datapath)                                 reads the ring buffer
    L7Service(ctx, datapath, policy, flows)                    proxy; asks policy, records into flows
    DnsService(ctx, policy, flows)                             DNS proxy, FQDN cache, toFQDNs identities

Endpoint changes reach them in this order (the datapath attaches a new
endpoint before the policy recompiles for it); they close in reverse order.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.agent.api import LocalAPI
from workbench.agent.context import EndpointObserver, LabContext
from workbench.agent.dns.service import DnsService
from workbench.agent.flows import FlowService
from workbench.agent.l7.service import L7Service
from workbench.agent.policy import PolicyService
from workbench.datapath.cookies import COOKIE_FILE
from workbench.datapath.loader import Datapath
from workbench.lab.model import Endpoint
from workbench.node import topology


@dataclass
class Services:
    """The running services of one agent."""

    datapath: Datapath
    policy: PolicyService
    flows: FlowService
    l7: L7Service
    dns: DnsService

    @classmethod
    def start(cls, ctx: LabContext) -> Services:
        """Compile the datapath and start every service (the node netns must exist)."""
        node = topology.node_netns(ctx.lab)
        datapath = Datapath(ctx.lab, node, cookie_file=ctx.dir / COOKIE_FILE)
        policy = PolicyService(ctx, datapath)
        flows = FlowService(node, ctx, ctx.observe, datapath)
        l7 = L7Service(ctx, datapath, policy, flows)
        dns = DnsService(ctx, policy, flows)
        return cls(datapath, policy, flows, l7, dns)

    @property
    def observers(self) -> list[EndpointObserver]:
        return [self.datapath, self.policy, self.flows, self.l7, self.dns]

    def attach_endpoint(self, ep: Endpoint) -> None:
        for observer in self.observers:
            observer.attach_endpoint(ep)

    def detach_endpoint(self, ep: Endpoint) -> None:
        for observer in reversed(self.observers):
            observer.detach_endpoint(ep)

    def register(self, api: LocalAPI) -> None:
        """Every service's local API methods."""
        tables: list[dict[str, Callable[..., Any]]] = [self.policy.methods(), self.flows.methods(),
                                                       self.l7.methods(), self.dns.methods()]
        for table in tables:
            for name, fn in table.items():
                api.register(name, fn)

    def status_fields(self) -> dict[str, Any]:
        return self.flows.status_fields()

    def enforcement(self, ep: Endpoint) -> tuple[bool, bool]:
        return self.policy.enforcement(ep)

    def close(self) -> None:
        for observer in reversed(self.observers):
            try:
                observer.close()
            except Exception:  # closing the rest matters more than this one's error; the log keeps it
                traceback.print_exc()
