"""Lab commands: `lab up/down/status`, `endpoint list`, `service list`, `identity list`, `exec`,
`connectivity test`. Handlers return result objects (see commands.py)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from workbench.cli.commands import MessageResult, TableResult, add_json_flag
from workbench.lab.names import DEFAULT_LAB

ENDPOINT_COLUMNS = ["id", "identity", "labels", "ipv4", "pod", "namespace", "ingress_enforcement",
                    "egress_enforcement", "app", "lxc", "ifindex"]
SERVICE_COLUMNS = ["name", "namespace", "cluster_ip", "ports", "selector", "backends"]


def endpoints_frame(endpoints: list[dict[str, Any]]) -> Any:
    """The `endpoint list` table (also `lab.endpoints`)."""
    import pandas as pd

    rows = [{**ep, "ingress_enforcement": ep.get("ingress_enforcement", False),
             "egress_enforcement": ep.get("egress_enforcement", False), "labels": list(ep["labels"])}
            for ep in endpoints]
    return pd.DataFrame(rows, columns=ENDPOINT_COLUMNS)


def services_frame(services: list[dict[str, Any]]) -> Any:
    import pandas as pd

    rows = [{**svc, "ports": [f"{p['port']}->{p['target_port']}/{p['protocol']}" for p in svc["ports"]],
             "selector": ",".join(f"{k}={v}" for k, v in svc["selector"].items())} for svc in services]
    return pd.DataFrame(rows, columns=SERVICE_COLUMNS)


class EndpointTable(TableResult):
    """`endpoint list`: full rows for --json and notebooks, a narrower table in the terminal."""

    def format_text(self) -> str:
        if self.frame.empty:
            return self.empty_text
        shown = self.frame.drop(columns=["lxc", "ifindex"]).copy()
        # The namespace-derived labels repeat the namespace column; the terminal shows the pod's own.
        shown["labels"] = [", ".join(lbl for lbl in labels if "namespace" not in lbl) for labels in shown["labels"]]
        return str(shown.to_string(index=False))


DEFAULT_FLOW_CAPACITY = 4095


def observe_options(capacity: int, metrics_port: int, archive_dir: str | None) -> dict[str, Any]:
    """The flow layer's options for the agent (validated here, before anything starts)."""
    from pathlib import Path

    from workbench.errors import ValidationError

    if not 1 <= capacity <= 10_000_000:
        raise ValidationError(f"--flow-capacity {capacity} must be between 1 and 10000000")
    if not 0 <= metrics_port <= 65535:
        raise ValidationError(f"--metrics-port {metrics_port} must be between 0 and 65535")
    options: dict[str, Any] = {"capacity": capacity, "metrics_port": metrics_port}
    if archive_dir:
        options["archive_dir"] = str(Path(archive_dir).resolve())
    return options


def _add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", "-l", default=DEFAULT_LAB, help=f"lab name (default: {DEFAULT_LAB})")


def _lab_up(args: argparse.Namespace) -> MessageResult:
    from workbench.client.lifecycle import start_lab
    from workbench.lab.manifests import read_manifest_files

    spec = read_manifest_files(args.manifests)    # refuses bad manifests before anything exists
    outcome = start_lab(spec, args.name, pod_cidr=args.pod_cidr, service_cidr=args.service_cidr,
                        observe=observe_options(args.flow_capacity, args.metrics_port, args.archive_dir))
    status = outcome.status
    if outcome.already_up:
        return MessageResult(f"lab {args.name} is already up ({status['pods']} pods, agent pid "
                             f"{status['agent_pid']}); `workbench lab down --name {args.name}` first to rebuild it",
                             {"already_up": True, "status": status})
    lines = [f"warning: {w}" for w in outcome.warnings]
    if outcome.recovered == ["adopted the running lab"]:
        lines.append("the agent had stopped; a new agent adopted the running lab (pods kept running)")
    elif outcome.recovered:
        lines.append(f"removed the remains of a previous run ({len(outcome.recovered)} objects)")
    lines.append(f"lab {args.name} is up: {status['pods']} pods, {status['services']} services, "
                 f"{status['identities']} identities in {status['build_seconds']:.1f} s "
                 f"(node netns {status['node_netns']})")
    if status.get("metrics"):
        lines.append(f"metrics: {status['metrics']}")
    return MessageResult("\n".join(lines), {"already_up": False, "status": status, "warnings": outcome.warnings})


def _lab_down(args: argparse.Namespace) -> MessageResult:
    from workbench.client.lifecycle import stop_lab
    from workbench.node.state import known_labs

    if args.all:
        labs = known_labs()
        removed = {name: stop_lab(name) for name in labs}
        total = sum(len(items) for items in removed.values())
        text = f"removed {len(labs)} labs ({', '.join(labs)}; {total} objects)" if labs else "no labs on this node"
        return MessageResult(text, {"removed": removed})
    removed_objects = stop_lab(args.name)
    text = (f"lab {args.name} removed ({len(removed_objects)} objects)" if removed_objects
            else f"lab {args.name} is not up")
    return MessageResult(text, {"removed": removed_objects})


def _lab_status(args: argparse.Namespace) -> MessageResult:
    from workbench.client.lifecycle import lab_status

    status = lab_status(args.name)
    width = max(len(k) for k in status)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in status.items() if k != "warnings")
    return MessageResult(text, status, exit_code=0 if status["status"] == "ready" else 1)


def _lab_list(args: argparse.Namespace) -> TableResult:
    import pandas as pd

    from workbench.client.lifecycle import lab_status
    from workbench.node.state import known_labs

    rows = [lab_status(name) for name in known_labs()]
    frame = pd.DataFrame(rows, columns=["lab", "status", "pods", "services", "agent_pid", "pod_cidr"])
    return TableResult(frame, empty_text="(no labs on this node)")


def _endpoint_list(args: argparse.Namespace) -> TableResult:
    from workbench.client.transport import AgentClient

    return EndpointTable(endpoints_frame(AgentClient(args.name).call("endpoint.list")), empty_text="(no endpoints)")


def _service_list(args: argparse.Namespace) -> TableResult:
    from workbench.client.transport import AgentClient

    return TableResult(services_frame(AgentClient(args.name).call("service.list")), empty_text="(no services)")


def _identity_list(args: argparse.Namespace) -> TableResult:
    import pandas as pd

    from workbench.client.transport import AgentClient

    return TableResult(pd.DataFrame(AgentClient(args.name).call("identity.list"), columns=["id", "labels"]))


def _exec(args: argparse.Namespace) -> Any:
    from workbench.client.execution import exec_in_pod

    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    # In a terminal the command talks to the user directly; in a notebook its output is the result.
    passthrough = sys.stdout is sys.__stdout__
    return exec_in_pod(args.name, args.pod, command, capture=not passthrough)


def _connectivity_test(args: argparse.Namespace) -> Any:
    from workbench.client.connectivity import run_connectivity_test

    return run_connectivity_test(args.name)


def register(sub: Any) -> None:
    from workbench.lab.ipam import DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR

    lab = sub.add_parser("lab", help="create, inspect and remove the lab")
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="SUBCOMMAND")
    lab_sub.required = True
    up = lab_sub.add_parser("up", help="create the lab from manifests (default: the star-wars demo)")
    up.add_argument("manifests", nargs="*", metavar="MANIFEST", help="Kubernetes YAML files")
    up.add_argument("--pod-cidr", default=DEFAULT_POD_CIDR)
    up.add_argument("--service-cidr", default=DEFAULT_SERVICE_CIDR)
    up.add_argument("--flow-capacity", type=int, default=DEFAULT_FLOW_CAPACITY, metavar="N",
                    help=f"flows the agent keeps (default {DEFAULT_FLOW_CAPACITY}, as Hubble)")
    up.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                    help="serve Prometheus /metrics on 127.0.0.1:PORT (default: any free port)")
    up.add_argument("--archive-dir", metavar="DIR", help="archive every flow continuously as parquet files in DIR")
    down = lab_sub.add_parser("down", help="remove the lab (idempotent; also after a crash)")
    status = lab_sub.add_parser("status", help="the lab's agent and counts")
    listing = lab_sub.add_parser("list", help="the labs on this node")
    add_json_flag(listing)
    listing.set_defaults(func=_lab_list)
    down.add_argument("--all", action="store_true", help="every lab on this node")
    for parser, handler in ((up, _lab_up), (down, _lab_down), (status, _lab_status)):
        _add_name(parser)
        add_json_flag(parser)
        parser.set_defaults(func=handler)

    for noun, helptext, func in (("endpoint", "the lab's endpoints (pods)", _endpoint_list),
                                 ("service", "the lab's ClusterIP services", _service_list),
                                 ("identity", "security identities", _identity_list)):
        parser = sub.add_parser(noun, help=helptext)
        noun_sub = parser.add_subparsers(dest=f"{noun}_command", metavar="SUBCOMMAND")
        noun_sub.required = True
        listing = noun_sub.add_parser("list", help=f"list {helptext}")
        _add_name(listing)
        add_json_flag(listing)
        listing.set_defaults(func=func)

    ex = sub.add_parser("exec", help="run a command in a pod: exec POD -- CMD [ARG...]")
    _add_name(ex)
    ex.add_argument("pod", metavar="POD", help="pod name, or deploy/NAME for a replica")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    ex.set_defaults(func=_exec)

    conn = sub.add_parser("connectivity", help="probe the lab")
    conn_sub = conn.add_subparsers(dest="connectivity_command", metavar="SUBCOMMAND")
    conn_sub.required = True
    test = conn_sub.add_parser("test", help="pod->pod, pod->service, pod->world over TCP and UDP")
    _add_name(test)
    add_json_flag(test)
    test.set_defaults(func=_connectivity_test)
