"""Lab commands: `lab up/down/status/list`, `endpoint list`, `service list`, `identity list`, `exec`,
`connectivity test`. Each is a call on ``workbench.client.lab.Lab``; handlers return result objects
(see commands.py)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from workbench.cli.commands import (
    MessageResult,
    TableResult,
    add_json_flag,
    add_lab_flag,
    add_table_flags,
    table_result,
)
from workbench.client.lab import Lab
from workbench.lab.ipam import DEFAULT_POD_CIDR, DEFAULT_SERVICE_CIDR

# `endpoint list` in a terminal, as `cilium endpoint list`: the namespace is among the labels (ns=...),
# the enforced directions share one column; -o wide adds the rest (app, the host side of the pod's link).
ENDPOINT_COLUMNS = ["id", "pod", "identity", "ipv4", "enforced", "labels"]


def endpoint_view(frame: Any) -> Any:
    """`endpoint list` in a terminal: one enforcement column, the namespace among the labels."""
    shown = frame.copy()
    shown["enforced"] = [("ingress\n" if ingress else "") + ("egress" if egress else "") or "none"
                         for ingress, egress in zip(shown.ingress_enforcement, shown.egress_enforcement, strict=True)]
    return shown[ENDPOINT_COLUMNS]


def _lab_up(args: argparse.Namespace) -> MessageResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # Lab.up warns for notebooks; here they are lines of the message
        lab = Lab.up([Path(p) for p in args.manifests] or None, args.lab, pod_cidr=args.pod_cidr,
                     service_cidr=args.service_cidr, flow_capacity=args.flow_capacity,
                     metrics_port=args.metrics_port, archive_dir=args.archive_dir,
                     fqdn_min_ttl=args.fqdn_min_ttl, replay_fallback=False)
    outcome = lab.up_outcome
    assert outcome is not None   # Lab.up always records what it did
    status = outcome.status
    if outcome.already_up:
        return MessageResult(f"lab {lab.name} is already up ({status['pods']} pods, agent pid "
                             f"{status['agent_pid']}); `workbench lab down --lab {lab.name}` first to rebuild it",
                             {"already_up": True, "status": status})
    lines = [f"warning: {w}" for w in outcome.warnings]
    if outcome.recovered == ["adopted the running lab"]:
        lines.append("the agent had stopped; a new agent adopted the running lab (pods kept running)")
    elif outcome.recovered:
        lines.append(f"removed the remains of a previous run ({len(outcome.recovered)} objects)")
    lines.append(f"lab {lab.name} is up: {status['pods']} pods, {status['services']} services, "
                 f"{status['identities']} identities in {status['build_seconds']:.1f} s "
                 f"(node netns {status['node_netns']})")
    if status.get("metrics"):
        lines.append(f"metrics: {status['metrics']}")
    return MessageResult("\n".join(lines), {"already_up": False, "status": status, "warnings": outcome.warnings})


def _lab_down(args: argparse.Namespace) -> MessageResult:
    if args.all:
        labs = Lab.known()
        removed = {name: Lab(name).down() for name in labs}
        total = sum(len(items) for items in removed.values())
        text = f"removed {len(labs)} labs ({', '.join(labs)}; {total} objects)" if labs else "no labs on this node"
        return MessageResult(text, {"removed": removed})
    removed_objects = Lab(args.lab).down()
    text = (f"lab {args.lab} removed ({len(removed_objects)} objects)" if removed_objects
            else f"lab {args.lab} is not up")
    return MessageResult(text, {"removed": removed_objects})


def _lab_status(args: argparse.Namespace) -> MessageResult:
    status = Lab(args.lab).status()
    width = max(len(k) for k in status)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in status.items() if k != "warnings")
    return MessageResult(text, status, exit_code=0 if status["status"] == "ready" else 1)


def _lab_list(args: argparse.Namespace) -> TableResult:
    return table_result(args, Lab.status_table(), empty_text="(no labs on this node)")


def _endpoint_list(args: argparse.Namespace) -> TableResult:
    return table_result(args, Lab(args.lab).endpoints, empty_text="(no endpoints)",
                        terminal_view=endpoint_view)


def _service_list(args: argparse.Namespace) -> TableResult:
    return table_result(args, Lab(args.lab).services, empty_text="(no services)")


def _identity_list(args: argparse.Namespace) -> TableResult:
    return table_result(args, Lab(args.lab).identities)


def _exec(args: argparse.Namespace) -> Any:
    command = list(args.cmd)
    if command and command[0] == "--":
        command = command[1:]
    # In a terminal the command talks to the user directly; in a notebook its output is the result.
    passthrough = sys.stdout is sys.__stdout__
    return Lab(args.lab).exec(args.pod, command, capture=not passthrough, timeout=None)


def _connectivity_test(args: argparse.Namespace) -> Any:
    return Lab(args.lab).connectivity_test()


def _add_subcommands(parser: argparse.ArgumentParser, noun: str) -> Any:
    sub = parser.add_subparsers(dest=f"{noun}_command", metavar="SUBCOMMAND")
    sub.required = True
    return sub


def register(sub: Any) -> None:
    lab = sub.add_parser("lab", help="create, inspect and remove the lab")
    lab_sub = _add_subcommands(lab, "lab")
    up = lab_sub.add_parser("up", help="create the lab from manifests (default: the star-wars demo)")
    up.add_argument("manifests", nargs="*", metavar="MANIFEST", help="Kubernetes YAML files")
    up.add_argument("--pod-cidr", default=DEFAULT_POD_CIDR)
    up.add_argument("--service-cidr", default=DEFAULT_SERVICE_CIDR)
    up.add_argument("--flow-capacity", type=int, metavar="N",
                    help="flows the agent keeps (default: as many as Hubble, 4095)")
    up.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                    help="serve Prometheus /metrics on 127.0.0.1:PORT (default: any free port)")
    up.add_argument("--archive-dir", metavar="DIR", help="archive every flow continuously as parquet files in DIR")
    up.add_argument("--fqdn-min-ttl", type=int, default=0, metavar="SECONDS",
                    help="least time an address learnt from DNS stays allowed by toFQDNs (default 0: the answer's TTL)")
    down = lab_sub.add_parser("down", help="remove the lab (idempotent; also after a crash)")
    down.add_argument("--all", action="store_true", help="every lab on this node")
    status = lab_sub.add_parser("status", help="the lab's agent and counts")
    for parser, handler in ((up, _lab_up), (down, _lab_down), (status, _lab_status)):
        add_lab_flag(parser)
        add_json_flag(parser)
        parser.set_defaults(func=handler)
    listing = lab_sub.add_parser("list", help="the labs on this node")
    add_table_flags(listing)
    listing.set_defaults(func=_lab_list)

    for noun, helptext, func in (("endpoint", "the lab's endpoints (pods)", _endpoint_list),
                                 ("service", "the lab's ClusterIP services", _service_list),
                                 ("identity", "security identities", _identity_list)):
        listing = _add_subcommands(sub.add_parser(noun, help=helptext), noun).add_parser(
            "list", help=f"list {helptext}")
        add_lab_flag(listing)
        add_table_flags(listing)
        listing.set_defaults(func=func)

    ex = sub.add_parser("exec", help="run a command in a pod: exec POD -- CMD [ARG...]")
    add_lab_flag(ex)
    ex.add_argument("pod", metavar="POD", help="pod name, or deploy/NAME for a replica")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    ex.set_defaults(func=_exec)

    test = _add_subcommands(sub.add_parser("connectivity", help="probe the lab"), "connectivity").add_parser(
        "test", help="pod->pod, pod->service, pod->world over TCP and UDP")
    add_lab_flag(test)
    add_json_flag(test)
    test.set_defaults(func=_connectivity_test)
