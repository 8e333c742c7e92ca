"""The lab agent: one process per lab (like cilium-agent), detached from the CLI.

It builds the lab from RUN_ROOT/<lab>/config.json (topology, identities,
ipcache and endpoints maps, socket LB, pod apps), then serves the local API
(JSON lines over RUN_ROOT/<lab>/agent.sock) until `lab down`.

Extension points for the other layers, so they plug in without touching this
file beyond one line in AGENT_PLUGINS:

- ``AGENT_PLUGINS``: modules with ``setup(agent: Agent) -> None``, run after
  the node exists and before any pod is created.
- ``agent.add_endpoint_observer(obs)``: ``obs.attach_endpoint(ep)`` is called
  for every endpoint (existing ones at once), ``obs.detach_endpoint(ep)`` when
  one goes, ``obs.close()`` (if present) when the agent stops. The TC
  datapath's ``Datapath`` fits as is.
- ``agent.register_method("policy.apply", fn)``: ``fn(**params)`` answers the
  local API method; it returns JSON-able data or raises WorkbenchError.
  ``connectivity.expect`` (params: probes) lets the policy layer say which
  probes of `connectivity test` should pass.

Run: ``python -m workbench.agent --lab NAME`` (the CLI and Lab.up do this).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import select
import signal
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import pydantic

from workbench.datapath import build
from workbench.datapath.socketlb import SocketLB
from workbench.errors import ValidationError, WorkbenchError
from workbench.lab import names
from workbench.lab.identity import IdentityAllocator, identity_labels
from workbench.lab.ipam import (
    DEFAULT_POD_CIDR,
    DEFAULT_SERVICE_CIDR,
    POD_GATEWAY,
    WORLD_CIDR,
    WORLD_GATEWAY,
    WORLD_HOST,
    AddressPool,
)
from workbench.lab.manifests import LabSpec
from workbench.lab.model import ID_HOST, ID_WORLD, Endpoint, Service, ServicePort
from workbench.lab.names import find_endpoint
from workbench.lab.services import Frontend, build_frontends, to_model
from workbench.node import state, system, topology
from workbench.node.processes import app_argv, spawn_in_pod

# Modules with setup(agent); other layers add one line each (like COMMAND_MODULES).
AGENT_PLUGINS: list[str] = ["workbench.agent.policy", "workbench.agent.flows", "workbench.agent.l7.service"]

APP_READY_TIMEOUT = 20.0


class EndpointObserver(Protocol):
    def attach_endpoint(self, ep: Endpoint) -> None: ...

    def detach_endpoint(self, ep: Endpoint) -> None: ...


Method = Callable[..., Any]


def strictly_typed(name: str, fn: Method) -> Method:
    """``fn`` with its parameters validated strictly (pydantic) against its annotations.

    A bad call raises ValidationError naming the method, the parameter and what
    was expected, in one line.
    """
    checked = pydantic.validate_call(config=pydantic.ConfigDict(strict=True, arbitrary_types_allowed=True))(fn)

    def call(**params: Any) -> Any:
        try:
            return checked(**params)
        except pydantic.ValidationError as err:
            if err.title not in (getattr(fn, "__qualname__", ""), getattr(fn, "__name__", "")):
                # raised inside fn, not by the argument check
                raise
            problem = err.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or "parameters"
            given = f", got {problem['input']!r}"[:80] if problem["type"] != "missing_argument" else ""
            raise ValidationError(f"{name}: parameter {where!r}: {problem['msg'].lower()}{given}") from None

    return call


class Agent:
    """Builds and serves one lab. Construct with the lab name; ``run()`` does the rest."""

    def __init__(self, lab: str) -> None:
        self.lab = names.check_lab_name(lab)
        self.dir = state.state_dir(lab)
        config = json.loads((self.dir / "config.json").read_text())
        self.spec = LabSpec.from_dict(config["spec"])
        self.pod_cidr: str = config.get("pod_cidr", DEFAULT_POD_CIDR)
        self.service_cidr: str = config.get("service_cidr", DEFAULT_SERVICE_CIDR)
        self.identities = IdentityAllocator(self.dir / "identities.json")
        self.endpoints: dict[str, Endpoint] = {}
        self.services: list[Service] = []
        self.frontends: list[Frontend] = []
        self.observers: list[EndpointObserver] = []
        self.methods: dict[str, Method] = {}
        # Plugins add fields to `lab status` (e.g. the metrics URL) through these.
        self.status_extras: list[Callable[[], dict[str, Any]]] = []
        # (ingress, egress) enforcement of an endpoint; the policy layer sets it.
        self.enforcement: Callable[[Endpoint], tuple[bool, bool]] | None = None
        self.status = "starting"
        self.started = time.time()
        self.build_seconds = 0.0
        self.adopted = False
        self.phases: dict[str, float] = {}
        self.maps: Any = None
        self.lb: SocketLB | None = None
        self.processes: dict[str, Any] = {}
        self._server: socketserver.UnixStreamServer | None = None
        self._register_builtin_methods()

    # ----- extension points -------------------------------------------------
    def register_method(self, name: str, fn: Method) -> None:
        """Serve ``fn(**params)`` as local API method ``name`` (replaces an existing one).

        Parameters are checked strictly against ``fn``'s annotations before it
        runs: a wrong type is an error, never coerced (``"off"`` is not a bool).
        """
        self.methods[name] = strictly_typed(name, fn)

    def add_endpoint_observer(self, observer: EndpointObserver) -> None:
        """Tell ``observer`` about every endpoint, the existing ones first."""
        self.observers.append(observer)
        for ep in self.endpoints.values():
            observer.attach_endpoint(ep)

    def endpoint(self, pod: str) -> Endpoint:
        """The endpoint of a pod by name (``deploy/NAME`` picks the first replica)."""
        return find_endpoint(list(self.endpoints.values()), pod)

    # ----- building ---------------------------------------------------------
    def build(self) -> None:
        t0 = time.monotonic()
        self._join_cgroup(state.AGENT_CGROUP)
        cidrs = topology.lab_cidrs(self.pod_cidr, self.service_cidr)
        # One compile: the socket LB object also declares the lab's pinned ipcache and endpoints maps.
        self.lb = SocketLB(self.lab)
        self.maps = self.lb.bpf
        for cidr, identity in (("0.0.0.0/0", ID_WORLD), (WORLD_CIDR, ID_WORLD), (f"{WORLD_GATEWAY}/32", ID_HOST),
                               (f"{POD_GATEWAY}/32", ID_HOST)):
            build.ipcache_set(self.maps, cidr, identity)
        self._phase("maps_and_socket_lb", t0)
        topology.create_node(self.lab)
        topology.create_world(self.lab, [self.pod_cidr, self.service_cidr])
        self._phase("node", t0)
        for module in AGENT_PLUGINS:
            importlib.import_module(module).setup(self)
        self._phase("plugins", t0)

        pod_ips, cluster_ips = AddressPool(self.pod_cidr), AddressPool(self.service_cidr)
        for svc in self.spec.services:
            if svc.cluster_ip:
                cluster_ips.reserve(svc.cluster_ip)
        services = [(svc, svc.cluster_ip or cluster_ips.allocate()) for svc in self.spec.services]
        pods = [(pod, pod_ips.allocate()) for pod in self.spec.pods]
        for ep_id, (pod, ip) in enumerate(pods, start=1):
            self._create_endpoint(ep_id, pod, ip, cidrs)
        self.frontends = build_frontends(services, pods)
        self.lb.set_frontends(self.frontends)
        self.services = [to_model(svc, ip, self.frontends) for svc, ip in services]
        self._write_hosts_files(services)
        self._phase("pods", t0)
        self._start_apps()
        self._phase("apps", t0)
        self.build_seconds = time.monotonic() - t0
        self.status = "ready"
        self._save_state()

    def adopt(self) -> None:
        """Take over the lab a dead agent left running: pods, apps, maps and attached programs stay.

        Like a restarted cilium-agent: the datapath never paused. Endpoints and
        services come from state.json; observers (the TC datapath) are told about
        every endpoint again; apps whose process died are started again.
        """
        t0 = time.monotonic()
        self._join_cgroup(state.AGENT_CGROUP)
        saved = json.loads((self.dir / "state.json").read_text())
        self.lb = SocketLB(self.lab)
        self.maps = self.lb.bpf
        for module in AGENT_PLUGINS:
            importlib.import_module(module).setup(self)
        for data in saved["endpoints"]:
            ep = Endpoint(**{k: v for k, v in data.items() if k in Endpoint.__dataclass_fields__})
            ep.labels = tuple(ep.labels)
            if not Path(f"/run/netns/{ep.netns}").exists():
                raise WorkbenchError(f"cannot adopt lab {self.lab}: netns {ep.netns} is gone")
            self.endpoints[ep.pod] = ep
            for observer in self.observers:
                observer.attach_endpoint(ep)
        self.services = [Service(**{**data, "ports": [ServicePort(**p) for p in data["ports"]]})
                         for data in saved["services"]]
        self.frontends = [Frontend(**{**f, "backends": [tuple(b) for b in f["backends"]]})
                          for f in saved.get("frontends", [])]
        self.lb.set_frontends(self.frontends)
        self._start_apps(only_dead=True)
        self.build_seconds = time.monotonic() - t0
        self.adopted = True
        self.status = "ready"
        self._save_state()

    def _phase(self, name: str, t0: float) -> None:
        """Record when a build phase ended (seconds since the build started), for `lab status` and bench."""
        self.phases[name] = round(time.monotonic() - t0 - sum(self.phases.values()), 3)

    def _join_cgroup(self, name: str) -> None:
        path = state.lab_cgroup(self.lab) / name
        path.mkdir(parents=True, exist_ok=True)
        (path / "cgroup.procs").write_text(str(os.getpid()))

    def _create_endpoint(self, ep_id: int, pod: Any, ip: str, cidrs: list[str]) -> None:
        assert self.lb is not None
        identity = self.identities.allocate(identity_labels(pod.labels, pod.namespace,
                                                            self.spec.namespaces.get(pod.namespace, {})))
        ifindex = topology.create_pod_network(self.lab, pod.name, ip, cidrs)
        cgroup = state.pod_cgroup(self.lab, pod.name)
        cgroup.mkdir(parents=True, exist_ok=True)
        self.lb.attach(cgroup)
        endpoints = self.maps["endpoints"]
        endpoints[endpoints.Key(ifindex)] = endpoints.Leaf(ep_id, identity.id, build.ipv4_be(ip), 0)
        build.ipcache_set(self.maps, f"{ip}/32", identity.id)
        ep = Endpoint(id=ep_id, pod=pod.name, namespace=pod.namespace, ipv4=ip, identity=identity.id,
                      labels=identity.labels, pod_labels=dict(pod.labels),
                      netns=topology.pod_netns(self.lab, pod.name), lxc=topology.lxc_name(self.lab, pod.name),
                      ifindex=ifindex, cgroup=str(cgroup), app=pod.app,
                      ports=[p.port for p in pod.ports], owner=pod.owner)
        self.endpoints[pod.name] = ep
        for observer in self.observers:
            observer.attach_endpoint(ep)

    def _write_hosts_files(self, services: list[tuple[Any, str]]) -> None:
        for ep in self.endpoints.values():
            entries: list[tuple[str, list[str]]] = [(ep.ipv4, [ep.pod])]
            for svc, ip in services:
                names = [f"{svc.name}.{svc.namespace}.svc.cluster.local", f"{svc.name}.{svc.namespace}.svc",
                         f"{svc.name}.{svc.namespace}"]
                if svc.namespace == ep.namespace:
                    names.append(svc.name)
                entries.append((ip, names))
            entries.append((WORLD_HOST, ["world", "world.lab"]))
            topology.write_hosts(ep.netns, entries)

    def _start_apps(self, only_dead: bool = False) -> None:
        """Start every pod's app (and the world's echo), then wait until all have bound their ports.

        ``only_dead``: skip pods whose cgroup still has a process (adopting a lab).
        """
        pending: dict[int, str] = {}
        world_cg = state.lab_cgroup(self.lab) / state.WORLD_CGROUP
        world_cg.mkdir(parents=True, exist_ok=True)
        jobs: list[tuple[str, str, Path, str, list[tuple[int, str]]]] = [
            ("world", topology.world_netns(self.lab), world_cg, "echo", [(80, "TCP"), (80, "UDP")])]
        for ep in self.endpoints.values():
            if ep.app == "idle":
                continue
            pod = next(p for p in self.spec.pods if p.name == ep.pod)
            ports = [(p.port, p.protocol) for p in pod.ports] or [(80, "TCP")]
            if ep.app == "echo":   # the echo answers on both protocols of each port, for UDP probes
                ports = sorted({(n, proto) for n, _ in ports for proto in ("TCP", "UDP")})
            jobs.append((ep.pod, ep.netns, Path(ep.cgroup), ep.app, ports))
        for name, netns, cgroup, app, ports in jobs:
            if only_dead and (cgroup / "cgroup.procs").read_text().strip():
                continue
            read_fd, write_fd = os.pipe()
            proc = spawn_in_pod(netns, cgroup, app_argv(app, name, ports, write_fd), state.pod_log(self.lab, name),
                                pass_fds=(write_fd,))
            os.close(write_fd)
            self.processes[name] = proc
            pending[read_fd] = name
        deadline = time.monotonic() + APP_READY_TIMEOUT
        while pending:
            ready, _, _ = select.select(list(pending), [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise WorkbenchError(f"apps did not start within {APP_READY_TIMEOUT:.0f} s: "
                                     f"{', '.join(sorted(pending.values()))} (logs in {state.log_dir(self.lab)})")
            for fd in ready:
                name = pending.pop(fd)
                ok = os.read(fd, 16).startswith(b"ready")
                os.close(fd)
                if not ok:
                    log = state.pod_log(self.lab, name)
                    tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                    raise WorkbenchError(f"the app of {name} failed to start: {' '.join(tail) or 'no output'}")

    # ----- local API --------------------------------------------------------
    def _register_builtin_methods(self) -> None:
        self.register_method("agent.ping", lambda: {"lab": self.lab, "pid": os.getpid()})
        self.register_method("agent.methods", lambda: sorted(self.methods))
        self.register_method("agent.shutdown", self._shutdown)
        self.register_method("lab.status", self.status_dict)
        self.register_method("endpoint.list", lambda: [self.endpoint_dict(ep) for ep in self.endpoints.values()])
        self.register_method("endpoint.get", self._endpoint_get)
        self.register_method("service.list", lambda: [svc.to_dict() for svc in self.services])
        self.register_method("identity.list", lambda: [{"id": i.id, "labels": list(i.labels)}
                                                       for i in self.identities.all()])
        self.register_method("lb.list", lambda: self.lb.frontend_entries() if self.lb else [])

    def _endpoint_get(self, pod: str) -> dict[str, Any]:
        return self.endpoint_dict(self.endpoint(pod))

    def endpoint_dict(self, ep: Endpoint) -> dict[str, Any]:
        ingress, egress = self.enforcement(ep) if self.enforcement else (False, False)
        return {**ep.to_dict(), "ingress_enforcement": ingress, "egress_enforcement": egress}

    def status_dict(self) -> dict[str, Any]:
        return {
            "lab": self.lab, "status": self.status, "agent_pid": os.getpid(),
            "pods": len(self.endpoints), "services": len(self.services),
            "identities": len(self.identities.all()),
            "pod_cidr": self.pod_cidr, "service_cidr": self.service_cidr,
            "node_netns": topology.node_netns(self.lab), "world": WORLD_HOST,
            "pins": str(build.pin_dir(self.lab)), "state_dir": str(self.dir),
            "build_seconds": round(self.build_seconds, 3), "started": self.started, "adopted": self.adopted,
            "build_phases": self.phases,
            "warnings": self.spec.warnings,
            **{k: v for extra in self.status_extras for k, v in extra().items()},
        }

    def _save_state(self) -> None:
        data = {"status": self.status_dict(), "endpoints": [ep.to_dict() for ep in self.endpoints.values()],
                "services": [svc.to_dict() for svc in self.services],
                "frontends": [asdict(f) for f in self.frontends]}
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.dir / "state.json")

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        method = request.get("method")
        params = request.get("params") or {}
        if method not in self.methods:
            return {"ok": False, "type": "NotFoundError",
                    "error": f"the agent has no method {method!r}; it has {', '.join(sorted(self.methods))}"}
        try:
            return {"ok": True, "result": self.methods[str(method)](**params)}
        except WorkbenchError as err:
            return {"ok": False, "type": type(err).__name__, "error": str(err)}
        except Exception as err:  # the server must outlive a broken handler; the log keeps the trace
            traceback.print_exc()
            return {"ok": False, "type": "WorkbenchError", "error": f"{method} failed: {type(err).__name__}: {err}"}

    def serve(self) -> None:
        agent = self
        path = state.socket_path(self.lab)
        path.unlink(missing_ok=True)

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                try:
                    request = json.loads(line)
                except json.JSONDecodeError:
                    reply: dict[str, Any] = {"ok": False, "type": "WorkbenchError", "error": "bad request"}
                else:
                    reply = agent.dispatch(request)
                self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self._server = Server(str(path), Handler)
        signal.signal(signal.SIGTERM, lambda *_: self._shutdown())
        self._server.serve_forever(poll_interval=0.2)
        self._server.server_close()

    def _shutdown(self) -> str:
        """Stop serving; pods, maps and programs stay (the datapath survives the agent)."""
        if self._server is not None:
            threading.Thread(target=self._server.shutdown, daemon=True).start()
        return "shutting down"

    def close(self) -> None:
        for observer in self.observers:
            close = getattr(observer, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    traceback.print_exc()
        if self.lb is not None:
            self.lb.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench.agent")
    parser.add_argument("--lab", required=True)
    parser.add_argument("--adopt", action="store_true", help="take over the running lab of a dead agent")
    args = parser.parse_args(argv)
    system.require_ready("the lab agent")
    agent = Agent(args.lab)
    state.pid_path(args.lab).write_text(str(os.getpid()))
    try:
        agent.adopt() if args.adopt else agent.build()
    except Exception as err:
        traceback.print_exc()
        message = str(err) if isinstance(err, WorkbenchError) else f"{type(err).__name__}: {err}"
        (agent.dir / "agent.error").write_text(message)
        return 1
    print(f"lab {args.lab} ready in {agent.build_seconds:.2f} s: {len(agent.endpoints)} pods", flush=True)
    try:
        agent.serve()
    finally:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
