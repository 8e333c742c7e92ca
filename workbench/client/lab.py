"""The Python API of a lab: ``wb.Lab``.

A ``Lab`` is a client of the lab's agent (see docs/): a notebook kernel, the
CLI and a second notebook all see the same lab. Nothing here calls pyroute2
directly, so it is safe inside Jupyter's asyncio loop. The `workbench` CLI is
a layer of commands over this class.

Which lab: the ``name`` given, else ``$WORKBENCH_LAB``, else ``default``.

The pandas-backed modules (``frames``, ``policy``, ``flows``) are imported on
first use, so that starting the CLI does not pay for pandas.

Example::

    import workbench as wb

    with wb.Lab.up() as lab:                      # the star-wars demo
        print(lab.exec("xwing", "curl -s -XPOST deathstar.default.svc.cluster.local/v1/request-landing"))
        lab.endpoints                             # DataFrame
        assert lab.connectivity_test().exit_code == 0
    # leaving the block ran lab.down()
"""

from __future__ import annotations

import html
import shlex
import time
import warnings
from pathlib import Path
from typing import Any

from workbench.client.connectivity import ConnectivityReport, Expectation, run_connectivity_test
from workbench.client.execution import ExecResult, exec_in_pod
from workbench.client.lifecycle import UpOutcome, lab_status, start_lab, stop_lab
from workbench.client.transport import AgentClient
from workbench.errors import NotFoundError, ValidationError, WorkbenchError
from workbench.lab.ipam import DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR
from workbench.lab.manifests import LabSpec, parse_manifests, read_manifest_files
from workbench.lab.names import check_lab_name, default_lab
from workbench.lab.yamldocs import read_text_file
from workbench.node.state import known_labs


def _replaying(fallback: bool = False) -> bool:
    """Is this process in replay mode? ``fallback``: switch to it when this machine cannot run a lab."""
    from workbench.replay.session import lab_node_available, session, start_replay

    current = session()
    if current.replaying:
        return True
    if fallback and current.mode == "live" and not lab_node_available():
        start_replay(current.tutorial)
        return True
    return False


def observe_options(capacity: int | None, metrics_port: int, archive_dir: str | Path | None) -> dict[str, Any]:
    """The flow layer's options for the agent, validated before anything starts.

    ``capacity`` None leaves the agent its default (``observe.store.DEFAULT_CAPACITY``,
    as Hubble), which stays out of this module so that the CLI starts without pandas.

    Example::

        >>> observe_options(None, 0, None)
        {'metrics_port': 0}
        >>> observe_options(100, 9090, None)
        {'metrics_port': 9090, 'capacity': 100}
    """
    if capacity is not None and not 1 <= capacity <= 10_000_000:
        raise ValidationError(f"--flow-capacity {capacity} must be between 1 and 10000000")
    if not 0 <= metrics_port <= 65535:
        raise ValidationError(f"--metrics-port {metrics_port} must be between 0 and 65535")
    options: dict[str, Any] = {"metrics_port": metrics_port}
    if capacity is not None:
        options["capacity"] = capacity
    if archive_dir:
        options["archive_dir"] = str(Path(archive_dir).resolve())
    return options


def _spec_from(manifests: str | Path | list[str | Path] | None) -> LabSpec:
    """File paths, YAML text, or a list of either (None: the demo)."""
    if manifests is None:
        return read_manifest_files([])
    texts: list[tuple[str, str]] = []
    for index, item in enumerate(manifests if isinstance(manifests, list) else [manifests]):
        if isinstance(item, str) and ("\n" in item or item.lstrip().startswith(("apiVersion", "kind", "---"))):
            texts.append((f"manifest {index}", item))
            continue
        path = Path(item)
        if not path.is_file():
            raise NotFoundError(f"manifest {path} does not exist")
        texts.append((path.name, read_text_file(path)))   # bounded: size, binary, UTF-8
    return parse_manifests(texts)


class Lab:
    """A running lab, seen through its agent.

    Create one with :meth:`Lab.up` or attach to a running one with
    :meth:`Lab.connect`. As a context manager, leaving the block removes the lab.
    ``name`` defaults to ``$WORKBENCH_LAB``, else ``default``.
    """

    def __init__(self, name: str | None = None, *, warnings: list[str] | None = None) -> None:
        self.name = check_lab_name(name or default_lab())
        self.warnings: list[str] = warnings or []
        # What Lab.up did (already up, recovered remains, the agent's status); None for Lab(...)/connect().
        self.up_outcome: UpOutcome | None = None
        self._client = AgentClient(self.name)

    # ----- lifecycle --------------------------------------------------------
    @classmethod
    def up(cls, manifests: str | Path | list[str | Path] | None = None, name: str | None = None, *,
           pod_cidr: str = DEFAULT_POD_CIDR, service_cidr: str = DEFAULT_SERVICE_CIDR,
           flow_capacity: int | None = None, metrics_port: int = 0,
           archive_dir: str | Path | None = None, fqdn_min_ttl: int = 0, replay_fallback: bool = True) -> Lab:
        """Create the lab (default: the star-wars demo), or connect when it is already up.

        ``manifests``: file paths, YAML text, or a list of them. Invalid
        manifests or options raise ValidationError before anything is created.
        ``flow_capacity``: flows the agent keeps (default 4095, as Hubble); ``metrics_port``: Prometheus
        /metrics on 127.0.0.1 (0: any free port, see ``lab.status()``);
        ``archive_dir``: archive all flows continuously as parquet files.
        ``fqdn_min_ttl``: the least time (seconds) an address learnt from a DNS answer stays allowed by
        toFQDNs, when the answer's TTL is shorter (Cilium's ``--tofqdns-min-ttl``; 0: the answer's TTL).
        ``replay_fallback``: without root (or eBPF's capabilities), return :meth:`replay` instead of
        failing (the CLI's ``lab up`` says what is missing instead).

        Example::

            lab = wb.Lab.up("my-app.yaml", name="demo", pod_cidr="10.10.0.0/16")
        """
        name = check_lab_name(name or default_lab())
        spec = _spec_from(manifests)
        if _replaying(fallback=replay_fallback):
            return cls.replay(name)
        if isinstance(fqdn_min_ttl, bool) or not isinstance(fqdn_min_ttl, int) or not 0 <= fqdn_min_ttl <= 86400:
            raise ValidationError(f"fqdn_min_ttl {fqdn_min_ttl!r} must be a whole number of seconds, 0 to 86400")
        outcome = start_lab(spec, name, pod_cidr=pod_cidr, service_cidr=service_cidr,
                            observe=observe_options(flow_capacity, metrics_port, archive_dir),
                            fqdn_min_ttl=fqdn_min_ttl)
        lab = cls(name, warnings=list(outcome.warnings))
        lab.up_outcome = outcome
        from workbench.replay.session import session

        session().record({"kind": "up", "result": {"already_up": outcome.already_up, "status": outcome.status,
                                                   "warnings": outcome.warnings, "recovered": outcome.recovered}},
                         name)
        if outcome.already_up:
            lab.warnings.append(f"lab {name} was already up; connected to it (manifests not applied)")
        for message in lab.warnings:     # shown under the notebook cell
            warnings.warn(message, UserWarning, stacklevel=2)
        return lab

    @classmethod
    def replay(cls, name: str | None = None, *, tutorial: str | None = None) -> Lab:
        """A lab served from the recording shipped with the workbench: no root, no eBPF (replay mode).

        Views (endpoints, services, flows with every filter, metrics, the policy map, the service map,
        the dashboard) come from a star-wars lab recorded on a real node; what needs a kernel fails
        with one line ("replay mode: needs a lab node (root + eBPF)"). ``Lab.up()`` falls back to this
        by itself where eBPF is unavailable. ``tutorial`` picks a tutorial's recorded sequence.

        Example::

            lab = wb.Lab.replay()
            lab.flows(verdict="DROPPED")
        """
        from workbench.replay.session import start_replay

        current = start_replay(tutorial)
        lab = cls(name)
        assert current.replayer is not None
        recorded = current.replayer.lifecycle(lab.name, "up").get("result") or {}
        lab.up_outcome = UpOutcome(lab.name, bool(recorded.get("already_up", False)),
                                   dict(recorded.get("status") or {"status": "ready"}),
                                   list(recorded.get("warnings") or []), list(recorded.get("recovered") or []))
        lab.warnings += lab.up_outcome.warnings
        if lab.up_outcome.already_up:
            lab.warnings.append(f"lab {lab.name} was already up; connected to it (manifests not applied)")
        for message in lab.warnings:     # as Lab.up shows them
            warnings.warn(message, UserWarning, stacklevel=2)
        return lab

    @property
    def replaying(self) -> bool:
        """True when this lab is served from a recording (replay mode)."""
        return _replaying()

    @classmethod
    def connect(cls, name: str | None = None) -> Lab:
        """Attach to a running lab; NotFoundError when it is not up.

        Example::

            lab = wb.Lab.connect()      # the lab `workbench lab up` started
        """
        lab = cls(name)
        lab._client.call("agent.ping")
        return lab

    def down(self) -> list[str]:
        """Remove the lab and everything it created (idempotent); returns what was removed."""
        if _replaying():
            return []      # a recording has nothing to remove
        return stop_lab(self.name)

    @staticmethod
    def known() -> list[str]:
        """The names of the labs that have state on this node (up, starting or broken).

        Example::

            for name in wb.Lab.known():
                wb.Lab(name).down()
        """
        return known_labs()

    @staticmethod
    def status_table() -> Any:
        """One row per lab on this node: lab, status, pods, services, agent_pid, pod_cidr."""
        from workbench.client.frames import labs_frame

        return labs_frame([lab_status(name) for name in known_labs()])

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ----- views ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The agent's status (pods, services, CIDRs, build time), or status "down"/"broken"."""
        from workbench.replay.session import session

        current = session()
        if current.replaying and current.replayer is not None:
            status = dict(current.replayer.lifecycle(self.name, "status").get("result") or {"status": "ready"})
            if status.get("metrics"):       # the recorded /metrics, served here
                status["metrics"] = current.replayer.metrics_url(self.name)
            return status
        status = lab_status(self.name)
        current.record({"kind": "status", "result": status}, self.name)
        return status

    @property
    def endpoints(self) -> Any:
        """One row per pod: id, identity, labels, ipv4, pod, namespace, enforcement, app, lxc, ifindex."""
        from workbench.client.frames import endpoints_frame

        return endpoints_frame(self._client.call("endpoint.list"))

    @property
    def services(self) -> Any:
        """One row per ClusterIP service: name, namespace, cluster_ip, ports, selector, backends."""
        from workbench.client.frames import services_frame

        return services_frame(self._client.call("service.list"))

    @property
    def identities(self) -> Any:
        """Security identities (reserved ones first) and their labels."""
        from workbench.client.frames import identities_frame

        return identities_frame(self._client.call("identity.list"))

    @property
    def fqdn_cache(self) -> Any:
        """Names the DNS proxy learnt (name, ip, ttl, expires, identity), as ``cilium fqdn cache list``.

        Example::

            lab.fqdn_cache.query("name == 'api.github.com'")
        """
        from workbench.client.frames import fqdn_cache_frame

        return fqdn_cache_frame(self._client.call("fqdn.cache"))

    def dns_status(self) -> dict[str, Any]:
        """The DNS proxy's counters (queries in flight, refused, malformed, dropped in a flood, ...)."""
        return dict(self._client.call("dns.status"))

    @property
    def policy(self) -> Any:
        """Policies of this lab: ``apply``, ``get``, ``delete``, ``audit``, ``explain`` and the live ``map``."""
        from workbench.client.policy import LabPolicy

        return LabPolicy(self._client)

    # ----- observe (Hubble) ----------------------------------------------------
    def flows(self, *, after: int | None = None, **filters: Any) -> Any:
        """Flows as a DataFrame with the flow columns (see docs/); filters as `hubble observe`.

        ``attrs["lost_events"]`` counts events the datapath or the reader lost;
        ``attrs["seq"]`` is the newest flow's sequence number: pass it as
        ``after`` to get only the flows that came later (``observe --follow``).

        Example::

            lab.flows(verdict="DROPPED", from_pod="xwing", last=20)
        """
        from workbench.client.flows import agent_flows

        return agent_flows(self.name, after=after, **filters)

    def export_flows(self, path: str | Path, **filters: Any) -> dict[str, Any]:
        """Have the agent write the (filtered) flows to ``path`` as parquet; returns path and rows.

        Example::

            lab.export_flows("/tmp/drops.parquet", verdict="DROPPED")
        """
        from workbench.client.flows import agent_export

        return agent_export(str(path), self.name, **filters)

    def observe(self, **options: Any) -> Any:
        """The live dashboard widget (flows/s by verdict, drops by reason, top talkers, latest flows).

        In replay mode outside a tutorial's recorded sequence, the recorded flows play back in time
        (workbench.replay.playback); inside it, the dashboard gets what it got on the lab node.
        """
        from workbench.client.flows import lab_dashboard
        from workbench.replay.session import session

        current = session()
        if current.replaying and current.replayer is not None and current.replayer.tutorial is None:
            from workbench.observe.dashboard import observe_dashboard
            from workbench.replay.playback import Playback

            return observe_dashboard(Playback(self.flows()), **options)

        return lab_dashboard(self.name, **options)

    def service_map(self, **filters: Any) -> Any:
        """A plotly graph of pods and services, edges coloured by verdict with counts."""
        from workbench.client.flows import lab_service_map

        return lab_service_map(self.name, **filters)

    def metrics(self) -> Any:
        """The lab's Prometheus metrics (Hubble's names) as a DataFrame."""
        from workbench.client.flows import lab_metrics

        return lab_metrics(self.name)

    def metrics_text(self) -> str:
        """The lab's Prometheus text exposition, as its /metrics endpoint serves it."""
        from workbench.client.flows import agent_metrics_text

        return agent_metrics_text(self.name)

    def call(self, method: str, **params: Any) -> Any:
        """Call a local API method of the agent (e.g. ones the policy layer registers)."""
        return self._client.call(method, **params)

    # ----- actions ----------------------------------------------------------
    def exec(self, pod: str, cmd: str | list[str], *, input: str | None = None,
             timeout: float | None = 60.0, check: bool = False, capture: bool = True) -> ExecResult:
        """Run ``cmd`` in ``pod`` (or ``deploy/NAME``): its netns, cgroup and /etc/hosts.

        A string is split like a shell would. ``check=True`` raises when the
        exit code is not 0. ``capture=False`` gives the command this process's
        stdin, stdout and stderr (a terminal) instead of returning its output.

        Example::

            >>> lab.exec("xwing", "curl -s -XPOST deathstar.default.svc.cluster.local/v1/request-landing").stdout
            'Ship landed\\n'
        """
        from workbench.replay.session import session

        command = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        current = session()
        if current.replaying and current.replayer is not None:
            recorded = current.replayer.exec(self.name, pod, command)
            result = ExecResult(recorded["resolved_pod"], command, recorded["exit_code"], recorded["stdout"],
                                recorded["stderr"])
        else:
            started = time.monotonic()
            result = exec_in_pod(self.name, pod, command, capture=capture, input=input, timeout=timeout)
            if capture:   # its duration: a replayed command run in the background lasts as long
                current.record({"kind": "exec", "pod": pod, "command": command, "exit_code": result.exit_code,
                                "stdout": result.stdout, "stderr": result.stderr, "resolved_pod": result.pod,
                                "seconds": round(time.monotonic() - started, 3)}, self.name)
        if check and result.exit_code != 0:
            raise WorkbenchError(f"`{' '.join(command)}` in {result.pod} exited with {result.exit_code}: "
                                 f"{result.stderr.strip()[-200:]}")
        return result

    def connectivity_test(self, expect: Expectation | None = None) -> ConnectivityReport:
        """Probe pod->pod, pod->service and pod->world over TCP and UDP; ``.exit_code`` 1 on surprises."""
        from dataclasses import asdict

        from workbench.client.connectivity import Probe
        from workbench.replay.session import session

        current = session()
        if current.replaying and current.replayer is not None:
            recorded = current.replayer.lifecycle(self.name, "connectivity")
            if "probes" not in recorded:
                raise current.replayer.missing("a connectivity test (its probes run in the pods)")
            return ConnectivityReport(self.name, [Probe(**p) for p in recorded["probes"]])
        report = run_connectivity_test(self.name, expect)
        current.record({"kind": "connectivity", "probes": [asdict(p) for p in report.probes]}, self.name)
        return report

    def __repr__(self) -> str:
        return f"Lab(name={self.name!r})"

    def _repr_html_(self) -> str:
        status = self.status()
        head = (f"<b>Lab {html.escape(self.name)}</b>: {html.escape(str(status.get('status')))}"
                + (f", {status['pods']} pods, {status['services']} services" if "pods" in status else ""))
        if status.get("status") != "ready":
            return f"<div>{head}</div>"
        return f"<div>{head}{self.endpoints.to_html(index=False)}{self.services.to_html(index=False)}</div>"
