"""The L7 service of the lab agent (started after the policy and flow services it uses).

- Node netns routing for the redirect: ``lo`` up, ``ip rule fwmark
  0x200/0xf00 lookup 2004`` and ``local 0.0.0.0/0 dev lo table 2004``, so
  a packet the datapath assigned to the proxy's socket is delivered locally
  (only inside the lab's node netns).
- The datapath's explicit L7 switch (``l7_config``), set once the proxy
  listens: from then on the programs redirect connections whose policy entry
  names the proxy (they find the destination's ingress entry through the
  datapath's ``local_endpoints`` map).
- The :class:`~workbench.agent.l7.proxy.Proxy`, deciding each request from the
  policy service's compiled policy and writing flow rows into the flow
  service's store.
- Local API: ``l7.status()``, and ``connectivity.expect`` (the policy
  service's L3/L4 answer, refined by the HTTP rules).
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from workbench.agent.addresses import PodAddresses
from workbench.agent.context import LabContext
from workbench.agent.flows import FlowService
from workbench.agent.l7.attribution import Attributor
from workbench.agent.l7.flows import FlowRecorder
from workbench.agent.l7.proxy import Decision, Exchange, Proxy
from workbench.agent.policy import PolicyService
from workbench.datapath.loader import Datapath
from workbench.lab.model import Endpoint
from workbench.node import netlink, topology
from workbench.policy.compiler import DEFAULT_PROXY_PORT
from workbench.policy.l7 import HttpRule, request_allowed

TO_PROXY_MARK = 0x0200
MARK_MASK = 0x0F00
PROXY_ROUTE_TABLE = 2004       # Cilium's table number for the same purpose
PROXY_RULE_PRIORITY = 9
RTN_LOCAL = 2
RT_SCOPE_HOST = 254


@netlink.off_event_loop
def setup_redirect_routing(node_netns: str) -> None:
    """Local delivery of marked packets inside ``node_netns`` (idempotent)."""
    with IPRoute(netns=node_netns) as ipr:
        lo = netlink.link_index(ipr, "lo")
        ipr.link("set", index=lo, state="up")
        try:
            ipr.rule("add", fwmark=TO_PROXY_MARK, fwmask=MARK_MASK, table=PROXY_ROUTE_TABLE,
                     priority=PROXY_RULE_PRIORITY)
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise
        ipr.route("replace", dst="0.0.0.0/0", table=PROXY_ROUTE_TABLE, type=RTN_LOCAL, oif=lo,
                  scope=RT_SCOPE_HOST)


WORLD_PROGRAM = "l7_from_world"   # bpf/lib/l7.h, compiled with lxc.bpf.c (one compile per lab)
TC_INGRESS = netlink.CLSACT_INGRESS
WORLD_FILTER_PRIO = 1
WORLD_FILTER_HANDLE = ":1"


@netlink.off_event_loop
def attach_world_redirect(datapath: Datapath, node_netns: str) -> None:
    """The world netns' clients enter through world0: redirect their L7 connections there (TC ingress)."""
    from bcc import BPF

    fn = datapath.bpf.load_func(WORLD_PROGRAM.encode(), BPF.SCHED_CLS)
    with IPRoute(netns=node_netns) as ipr:
        found = ipr.link_lookup(ifname=topology.WORLD_LINK)
        if not found:
            return  # a lab without a world (test beds)
        index = int(found[0])
        netlink.ensure_clsact(ipr, index)
        ipr.tc("replace-filter", "bpf", index, WORLD_FILTER_HANDLE, fd=fn.fd, name=WORLD_PROGRAM,
               parent=TC_INGRESS, classid=1, direct_action=True, prio=WORLD_FILTER_PRIO)


class L7Service(PodAddresses):
    """Proxy + redirect facts of one lab (one per agent)."""

    def __init__(self, ctx: LabContext, datapath: Datapath, policy: PolicyService, flows: FlowService,
                 port: int = DEFAULT_PROXY_PORT) -> None:
        super().__init__(ctx.maps)
        self.ctx = ctx
        self.datapath = datapath
        self.policy = policy
        self.port = port
        self.verdicts: Counter[str] = Counter()
        # (ep, direction, identity, port) -> rules of the compiled policy in _cached_for (a new compile is a
        # new object, which empties the cache)
        self._rules_cache: dict[tuple[int, str, int, int], tuple[HttpRule, ...] | None] = {}
        self._cached_for: object = None
        # who allowed a request (flows' *_allowed_by): each applied policy compiled on its own
        self.attributor = Attributor(lambda: policy.documents, lambda: list(ctx.endpoints.values()),
                                     lambda: list(ctx.identities.all()), lambda: ctx.spec.namespaces)
        node = topology.node_netns(ctx.lab)
        setup_redirect_routing(node)
        attach_world_redirect(datapath, node)
        self.recorder = FlowRecorder(flows.store)
        self.proxy = Proxy(node, port, self.decide, self.record)
        self.proxy.start()
        datapath.enable_l7_proxy()   # only now: a redirect before the proxy listens would be dropped

    def close(self) -> None:
        self.proxy.close()
        self.recorder.close()

    # -- the proxy's questions -------------------------------------------------------------
    def _rules(self, ep: Endpoint | None, direction: str, identity: int, port: int) -> tuple[HttpRule, ...] | None:
        if ep is None:
            return None
        compiled = self.policy.compiled
        if compiled is not self._cached_for:
            self._rules_cache, self._cached_for = {}, compiled
        key = (ep.id, direction, identity, port)
        if key not in self._rules_cache:
            self._rules_cache[key] = compiled.http_rules(ep.id, direction, identity, port)  # type: ignore[arg-type]
        return self._rules_cache[key]

    def decide(self, client: tuple[str, int], server: tuple[str, int], method: str, path: str,
               headers: dict[str, str]) -> Decision:
        """Ingress rules of the server pod and egress rules of the client pod must both allow."""
        src_id, dst_id = self.identity_of(client[0]), self.identity_of(server[0])
        allowed, direction = True, "INGRESS"
        server_ep, client_ep = self.endpoint_at(server[0]), self.endpoint_at(client[0])
        ingress = self._rules(server_ep, "ingress", src_id, server[1])
        egress = self._rules(client_ep, "egress", dst_id, server[1])
        if ingress is not None:
            allowed = request_allowed(ingress, method, path, headers)
        if egress is not None:
            allowed = allowed and request_allowed(egress, method, path, headers)
            if ingress is None:
                direction = "EGRESS"
        policies: tuple[str, ...] = ()
        if allowed and (ingress is not None or egress is not None):
            ep, peer = (server_ep, src_id) if direction == "INGRESS" else (client_ep, dst_id)
            assert ep is not None   # rules were found for it
            policies = self.attributor.allowed_by(self.policy.compiled, ep.id, direction.lower(),  # type: ignore[arg-type]
                                                  peer, server[1], method, path, headers)
        return Decision(allowed, src_id, dst_id, direction, policies)

    def record(self, exchange: Exchange) -> None:
        self.verdicts[exchange.verdict] += 1
        self.recorder.put(exchange)

    def status(self) -> dict[str, Any]:
        return {**self.proxy.status(), "verdicts": dict(self.verdicts)}

    def methods(self) -> dict[str, Callable[..., Any]]:
        """The local API methods of this service."""
        return {"l7.status": self.status, "connectivity.expect": self.expect}

    def expect(self, probes: list[dict[str, Any]]) -> list[bool]:
        """`connectivity test` expectations with L7: an HTTP probe that L3/L4 admits must also pass the
        HTTP rules (GET on its path) of every backend it may reach, or it gets 403."""
        answers = self.policy.expect(probes)
        by_pod = {ep.pod: ep for ep in self.ctx.endpoints.values()}
        services = {f"{svc.namespace}/{svc.name}": svc for svc in self.ctx.services}
        for i, probe in enumerate(probes):
            if not answers[i] or probe.get("protocol") != "TCP" or probe["source"] not in by_pod:
                continue
            client = (by_pod[probe["source"]].ipv4, 0)
            targets = [(probe["address"], int(probe["port"]))]
            svc = services.get(str(probe.get("destination"))) if probe.get("kind") == "pod-to-service" else None
            if svc is not None:
                port = next((p.target_port for p in svc.ports if p.port == probe["port"]), probe["port"])
                targets = [(by_pod[b].ipv4, int(port)) for b in svc.backends if b in by_pod]
            headers = {"host": str(probe["address"])}
            answers[i] = all(self.decide(client, t, "GET", str(probe.get("path") or "/"), headers).allowed
                             for t in targets)
        return answers
