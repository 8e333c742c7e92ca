"""The lab agent: one process per lab (like cilium-agent + Hubble), detached from the CLI.

It builds the lab from RUN_ROOT/<lab>/config.json (``agent/lab.py``), starts
its services (``agent/services.py``: datapath, policy, flows, L7), then
answers the local API on RUN_ROOT/<lab>/agent.sock (``agent/api.py``) until
`lab down`. Pods, maps and attached programs outlive this process; a new
agent started with ``--adopt`` takes them over.

Run: ``python -m workbench.agent --lab NAME`` (``workbench lab up`` and ``Lab.up`` do this).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict
from typing import Any

from workbench.agent.api import LocalAPI
from workbench.agent.context import LabContext
from workbench.agent.lab import PhaseClock, adopt_lab, build_lab, join_cgroup, save_state
from workbench.agent.services import Services
from workbench.datapath import build
from workbench.datapath.socketlb import SocketLB
from workbench.errors import WorkbenchError
from workbench.lab.clusterdns import dns_service_ip
from workbench.lab.ipam import WORLD_HOST
from workbench.lab.model import Endpoint
from workbench.lab.names import check_lab_name
from workbench.node import state, system, topology


class Agent:
    """One lab's agent: its context, its services and its local API."""

    def __init__(self, lab: str) -> None:
        self.lab = check_lab_name(lab)
        self.api = LocalAPI()
        self.status = "starting"
        self.started = time.time()
        self.build_seconds = 0.0
        self.adopted = False
        self.phases: dict[str, float] = {}
        self.ctx: LabContext | None = None
        self.services: Services | None = None

    def _context(self) -> LabContext:
        join_cgroup(self.lab, state.AGENT_CGROUP)
        # One compile: the socket LB object also declares the lab's pinned ipcache and endpoints maps.
        self.ctx = LabContext.load(self.lab, SocketLB(self.lab))
        return self.ctx

    def build(self) -> None:
        """Create the lab of config.json."""
        clock = PhaseClock()
        self.services = build_lab(self._context(), Services.start, clock)
        self._ready(clock, adopted=False)

    def adopt(self) -> None:
        """Take over the lab a dead agent left running: the datapath never paused."""
        clock = PhaseClock()
        self.services = adopt_lab(self._context(), Services.start)
        self._ready(clock, adopted=True)

    def _ready(self, clock: PhaseClock, adopted: bool) -> None:
        assert self.ctx is not None and self.services is not None
        self.phases, self.build_seconds, self.adopted = clock.phases, clock.total, adopted
        self._register_methods(self.ctx, self.services)
        self.status = "ready"
        save_state(self.ctx, self.status_dict())

    # ----- local API --------------------------------------------------------
    def _register_methods(self, ctx: LabContext, services: Services) -> None:
        api = self.api
        api.register("agent.ping", self.ping)
        api.register("agent.shutdown", api.shutdown)
        api.register("lab.status", self.status_dict)
        api.register("endpoint.list", self.endpoint_list)
        api.register("endpoint.get", self.endpoint_get)
        api.register("service.list", lambda: [svc.to_dict() for svc in ctx.services])
        api.register("identity.list", lambda: [{"id": i.id, "labels": list(i.labels)} for i in ctx.identities.all()])
        api.register("lb.list", ctx.lb.frontend_entries)
        services.register(api)

    def ping(self) -> dict[str, Any]:
        return {"lab": self.lab, "pid": os.getpid()}

    def endpoint_dict(self, ep: Endpoint) -> dict[str, Any]:
        ingress, egress = self.services.enforcement(ep) if self.services else (False, False)
        return {**ep.to_dict(), "ingress_enforcement": ingress, "egress_enforcement": egress}

    def endpoint_list(self) -> list[dict[str, Any]]:
        return [self.endpoint_dict(ep) for ep in self.ctx.endpoints.values()] if self.ctx else []

    def endpoint_get(self, pod: str) -> dict[str, Any]:
        if self.ctx is None:
            raise WorkbenchError(f"lab {self.lab} is still starting")
        return self.endpoint_dict(self.ctx.endpoint(pod))

    def status_dict(self) -> dict[str, Any]:
        ctx = self.ctx
        status: dict[str, Any] = {
            "lab": self.lab, "status": self.status, "agent_pid": os.getpid(),
            "node_netns": topology.node_netns(self.lab), "world": WORLD_HOST,
            "pins": str(build.pin_dir(self.lab)), "state_dir": str(state.state_dir(self.lab)),
            "build_seconds": round(self.build_seconds, 3), "started": self.started, "adopted": self.adopted,
            "build_phases": self.phases,
        }
        if ctx is not None:
            status.update({"pods": len(ctx.endpoints), "services": len(ctx.services),
                           "identities": len(ctx.identities.all()), "pod_cidr": ctx.pod_cidr,
                           "service_cidr": ctx.service_cidr, "warnings": ctx.spec.warnings,
                           "cluster_dns": dns_service_ip(ctx.service_cidr),
                           "external_hosts": [asdict(host) for host in ctx.spec.external_hosts]})
        if self.services is not None:
            status.update(self.services.status_fields())
        return status

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.api.shutdown())
        self.api.serve(state.socket_path(self.lab))

    def close(self) -> None:
        if self.services is not None:
            self.services.close()
        if self.ctx is not None:
            self.ctx.lb.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench.agent")
    parser.add_argument("--lab", required=True)
    parser.add_argument("--adopt", action="store_true", help="take over the running lab of a dead agent")
    args = parser.parse_args(argv)
    os.umask(0o077)   # state files 0600, directories 0700, whatever umask started us (the socket: api.py)
    system.require_ready("the lab agent")
    agent = Agent(args.lab)
    state.pid_path(args.lab).write_text(str(os.getpid()))
    try:
        agent.adopt() if args.adopt else agent.build()
    except Exception as err:
        traceback.print_exc()
        message = str(err) if isinstance(err, WorkbenchError) else f"{type(err).__name__}: {err}"
        (state.state_dir(args.lab) / "agent.error").write_text(message)
        return 1
    assert agent.ctx is not None
    print(f"lab {args.lab} ready in {agent.build_seconds:.2f} s: {len(agent.ctx.endpoints)} pods", flush=True)
    try:
        agent.serve()
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
