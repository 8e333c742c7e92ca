"""`workbench observe`, `workbench flows export`, `workbench metrics`.

Flows come from the lab (``Lab.flows``), or from a parquet archive with
``--input-file``. The same handler serves the CLI and ``%ebpf observe``: the
result's ``value()`` is the DataFrame, its text is the chosen ``-o`` format.
The flow modules (pandas) are imported when a command runs, not at CLI start.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from workbench.cli.commands import MessageResult, add_json_flag, add_lab_flag
from workbench.client.lab import Lab
from workbench.errors import ValidationError

DEFAULT_LAST = 20  # as `hubble observe`: without --last/--since/--all, the newest 20 flows
OUTPUTS = ("compact", "table", "json")

# argparse dest -> flows() filter name
FILTER_FLAGS = {
    "verdict": "verdict", "type": "event_type", "from_pod": "from_pod", "to_pod": "to_pod", "pod": "pod",
    "namespace": "namespace", "label": "label", "from_label": "from_label", "to_label": "to_label",
    "identity": "identity", "from_identity": "from_identity", "to_identity": "to_identity",
    "ip": "ip", "from_ip": "from_ip", "to_ip": "to_ip", "port": "port", "from_port": "from_port",
    "to_port": "to_port", "protocol": "protocol", "traffic_direction": "traffic_direction",
    "http_method": "http_method", "http_path": "http_path", "http_status": "http_status",
    "policy": "policy", "fqdn": "fqdn", "from_fqdn": "from_fqdn", "to_fqdn": "to_fqdn",
    "dns_query": "dns_query", "since": "since", "until": "until",
}


@dataclass
class FlowsResult:
    """Flows for a terminal (``-o`` text) and for notebooks (the DataFrame)."""

    frame: Any
    output: str = "compact"
    exit_code: int = 0

    def to_json(self) -> Any:
        from workbench.observe.render import flow_records

        return flow_records(self.frame)

    def format_text(self) -> str:
        from workbench.observe.render import render

        return render(self.frame, self.output)

    def value(self) -> Any:
        return self.frame


def filters_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flows() filters given on the command line (repeated flags -> lists)."""
    filters: dict[str, Any] = {}
    for dest, name in FILTER_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None or value == []:
            continue
        filters[name] = value[0] if isinstance(value, list) and len(value) == 1 else value
    return filters


def fetch_flows(args: argparse.Namespace, filters: dict[str, Any], after: int | None = None) -> Any:
    """Flows from --input-file or from the lab; the one place the lab is asked."""
    if args.input_file:
        from workbench.observe.archive import load_parquet
        from workbench.observe.filters import flows

        return flows(load_parquet(args.input_file), **filters)
    return Lab(args.lab).flows(after=after, **filters)


def _observe(args: argparse.Namespace) -> FlowsResult | MessageResult:
    filters = filters_from_args(args)
    if args.last is not None:
        filters["last"] = args.last
    elif not (args.all or args.follow or "since" in filters):
        filters["last"] = DEFAULT_LAST
    if args.follow:
        if args.input_file:
            raise ValidationError("--follow reads a live lab; it cannot be combined with --input-file")
        return _follow(args, filters)
    return FlowsResult(fetch_flows(args, filters), args.output)


def _follow(args: argparse.Namespace, filters: dict[str, Any]) -> MessageResult:
    """Print new flows as they arrive until interrupted (Ctrl-C)."""
    from workbench.observe.render import render

    frame = fetch_flows(args, filters)
    seq = int(frame.attrs.get("seq", 0))
    lost = int(frame.attrs.get("lost_events", 0))
    _print(render(frame, args.output))
    filters.pop("last", None)
    filters.pop("since", None)   # from here on, "after seq" selects the new flows
    try:
        while True:
            time.sleep(args.interval)
            frame = fetch_flows(args, filters, after=seq)
            seq = int(frame.attrs.get("seq", seq))
            new_lost = int(frame.attrs.get("lost_events", lost))
            frame.attrs["lost_events"] = new_lost - lost   # report only what was lost since the last print
            lost = new_lost
            if len(frame) or frame.attrs["lost_events"]:
                _print(render(frame, args.output))
    except KeyboardInterrupt:
        return MessageResult("")


def _print(text: str) -> None:
    if text:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def _export(args: argparse.Namespace) -> MessageResult:
    path = os.path.abspath(args.file)
    if not path.endswith(".parquet"):
        raise ValidationError(f"{args.file}: the export file name must end in .parquet")
    filters = filters_from_args(args)
    if args.input_file:
        from workbench.observe.archive import export_parquet

        frame = fetch_flows(args, filters)
        export_parquet(frame, path)
        rows = len(frame)
    else:
        rows = int(Lab(args.lab).export_flows(path, **filters)["rows"])
    return MessageResult(f"wrote {rows} flows to {path}", {"path": path, "rows": rows})


def _metrics(args: argparse.Namespace) -> MessageResult:
    text = Lab(args.lab).metrics_text()
    return MessageResult(text.rstrip("\n"), {"exposition": text})


def _add_filters(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--verdict", action="append", metavar="V", help="FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR")
    add("--type", "-t", action="append", metavar="T", help="trace, drop, policy-verdict, l7")
    add("--from-pod", action="append", metavar="[NS/]POD")
    add("--to-pod", action="append", metavar="[NS/]POD")
    add("--pod", action="append", metavar="[NS/]POD", help="either side")
    add("--namespace", action="append", metavar="NS")
    add("--label", action="append", metavar="K=V", help="either side; K=V[,K2=V2]")
    add("--from-label", action="append", metavar="K=V")
    add("--to-label", action="append", metavar="K=V")
    add("--identity", action="append", type=int, metavar="ID")
    add("--from-identity", action="append", type=int, metavar="ID")
    add("--to-identity", action="append", type=int, metavar="ID")
    add("--ip", action="append", metavar="IP|CIDR")
    add("--from-ip", action="append", metavar="IP|CIDR")
    add("--to-ip", action="append", metavar="IP|CIDR")
    add("--port", action="append", type=int, metavar="N")
    add("--from-port", action="append", type=int, metavar="N")
    add("--to-port", action="append", type=int, metavar="N")
    add("--protocol", action="append", metavar="P", help="TCP, UDP, ICMPv4, ...")
    add("--traffic-direction", action="append", metavar="D", help="ingress or egress")
    add("--http-method", action="append", metavar="M")
    add("--http-path", action="append", metavar="REGEX")
    add("--http-status", action="append", metavar="CODE", help='e.g. 403 or "5+"')
    add("--policy", action="append", metavar="[NS/]NAME",
        help="flows this policy allowed or denied (its name in *_allowed_by / *_denied_by)")
    add("--fqdn", action="append", metavar="PATTERN",
        help='either side\'s DNS names (src_names / dst_names), e.g. "*.github.com"')
    add("--from-fqdn", action="append", metavar="PATTERN", help="the source's DNS names")
    add("--to-fqdn", action="append", metavar="PATTERN", help="the destination's DNS names")
    add("--dns-query", action="append", metavar="REGEX", help="DNS rows whose query matches the regex")
    add("--since", metavar="T", help='a time or a duration ago: "5m", "2026-11-26T06:40:00Z"')
    add("--until", metavar="T")
    add("--input-file", metavar="F.parquet", help="read flows from an archive instead of the lab")
    add_lab_flag(parser)


def register(sub: Any) -> None:
    obs = sub.add_parser("observe", help="show flows, as `hubble observe`")
    _add_filters(obs)
    obs.add_argument("--last", type=int, metavar="N", help=f"the newest N matching flows (default {DEFAULT_LAST})")
    obs.add_argument("--all", action="store_true", help="every stored flow that matches")
    obs.add_argument("--follow", "-f", action="store_true", help="keep printing new flows")
    obs.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    obs.add_argument("-o", "--output", choices=OUTPUTS, default="compact", help="compact (default), table, json")
    obs.set_defaults(func=_observe)

    flows = sub.add_parser("flows", help="flow archive")
    flows_sub = flows.add_subparsers(dest="flows_command", metavar="SUBCOMMAND")
    flows_sub.required = True
    export = flows_sub.add_parser("export", help="write the lab's flows to a parquet file")
    export.add_argument("file", metavar="FILE.parquet")
    _add_filters(export)
    add_json_flag(export)
    export.set_defaults(func=_export)

    metrics = sub.add_parser("metrics", help="the Prometheus text exposition of the lab")
    add_lab_flag(metrics)
    metrics.set_defaults(func=_metrics)
