"""Policy commands: `policy apply/get/delete/audit/explain` and `bpf policy get`, over ``Lab.policy``."""

from __future__ import annotations

import argparse
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
from workbench.errors import NotFoundError, ValidationError

# In a terminal, entries come in one section per endpoint (as `cilium bpf policy get` prints one map per
# endpoint) with port and protocol as one "80/TCP" column; -o wide gives every column in one table.
SECTION = "endpoint_section"
# cidr: for a peer a CIDR rule selects, whether pods in range count (NetworkPolicy ipBlock) or not (Cilium);
# dns: the names a query to the DNS proxy may ask for; note: what a toFQDNs rule cannot show in entries
EXPLAIN_COLUMNS = ["change", "direction", "identity", "peer_labels", "port", "verdict", "rules", "http", "cidr", "dns",
                   "note"]
BPF_POLICY_COLUMNS = ["direction", "identity", "labels", "port", "action", "proxy_port", "packets", "bytes"]


def _port_protocol(protocol: Any, port: Any, port_end: Any = None) -> str:
    """ "80/TCP", "8080-8087/TCP", "ANY" (any protocol), "*/UDP" (any port)."""
    protocol, port = str(protocol or ""), str(port if port is not None else "")
    if protocol in ("", "ANY"):
        return protocol
    if port in ("", "0", "*"):
        port = "*"
    elif port_end is not None and str(port_end) not in ("", "0", port):
        port = f"{port}-{port_end}"
    return f"{port}/{protocol}"


def _sectioned(shown: Any, endpoint_ids: Any, columns: list[str]) -> Any:
    shown[SECTION] = [f"{pod} (endpoint {ep})" for pod, ep in zip(shown.pod, endpoint_ids, strict=True)]
    return shown[[SECTION] + [c for c in columns if c in shown.columns]]


def entries_view(frame: Any) -> Any:
    """`policy explain` and `policy apply --dry-run` (which adds a change column) in a terminal."""
    shown = frame.astype(object).where(frame.notna(), None)   # enforcement rows have no port
    if "port" in shown.columns and "protocol" in shown.columns:
        shown["port"] = [_port_protocol(proto, port) for proto, port in zip(shown.protocol, shown.port, strict=True)]
    return _sectioned(shown, shown.ep_id, EXPLAIN_COLUMNS)


def bpf_policy_view(frame: Any) -> Any:
    """`bpf policy get` in a terminal: a section per endpoint, port ranges as "8080-8087/TCP"."""
    shown = frame.astype(object).where(frame.notna(), None)
    shown["port"] = [_port_protocol(proto, port, end)
                     for proto, port, end in zip(shown.protocol, shown.port, shown.port_end, strict=True)]
    return _sectioned(shown, shown.endpoint, BPF_POLICY_COLUMNS)


def _apply(args: argparse.Namespace) -> MessageResult | TableResult:
    from workbench.client.frames import dry_run_frame  # pandas, only when a table is shown

    for path in args.files:
        if not Path(path).is_file():
            raise NotFoundError(f"policy file {path} does not exist")
    outcome = Lab(args.lab).policy.apply([Path(p) for p in args.files], dry_run=args.dry_run)
    if args.dry_run:
        return table_result(args, dry_run_frame(outcome), terminal_view=entries_view, sections=SECTION,
                            empty_text=f"dry run: {outcome['summary']} (nothing applied)")
    timing = outcome.get("timing", {})
    return MessageResult(
        f"applied {', '.join(outcome['applied'])}: {outcome['entries']} map entries, "
        f"{len(outcome['enforced'])} enforced endpoint directions"
        + (f", in force after {timing['effective_s'] * 1000:.1f} ms" if timing.get("effective_s") else ""),
        outcome)


def _get(args: argparse.Namespace) -> TableResult:
    # The whole document (raw) is for --json, as `kubectl get -o json`.
    return table_result(args, Lab(args.lab).policy.get(), empty_text="no policies", json_only=("raw",))


def _delete(args: argparse.Namespace) -> MessageResult:
    if not args.all and not args.names:
        raise ValidationError("policy delete needs NAME... or --all")
    gone = Lab(args.lab).policy.delete(*args.names, all=args.all)
    return MessageResult(f"deleted {', '.join(gone)}" if gone else "no policies to delete", {"deleted": gone})


def _audit(args: argparse.Namespace) -> MessageResult:
    outcome = Lab(args.lab).policy.audit(args.state == "on", args.pod)
    return MessageResult(f"audit mode {args.state} for {', '.join(outcome['endpoints'])}", outcome)


def _known_pod(lab: Lab, pod: str) -> None:
    """Refuse a --pod naming no pod of the lab: an empty table would read as "no entries for it"."""
    endpoints = lab.endpoints
    names = set(endpoints.pod) | {f"{ns}/{name}" for ns, name in zip(endpoints.namespace, endpoints.pod, strict=True)}
    if pod not in names:
        raise NotFoundError(f"pod {pod} not found; pods: {', '.join(sorted(endpoints.pod)) or '(none)'}")


def _explain(args: argparse.Namespace) -> TableResult:
    lab = Lab(args.lab)
    if args.pod:
        _known_pod(lab, args.pod)
    return table_result(args, lab.policy.explain(args.pod, args.direction),
                        terminal_view=entries_view, sections=SECTION, empty_text="no policy entries")


def _bpf_policy_get(args: argparse.Namespace) -> TableResult:
    lab = Lab(args.lab)
    frame = lab.policy.map
    if args.pod:
        _known_pod(lab, args.pod)
        frame = frame[frame.pod.str.endswith("/" + args.pod) | (frame.pod == args.pod)]
    return table_result(args, frame, terminal_view=bpf_policy_view, sections=SECTION,
                        empty_text="the policy map is empty")


RULES_COLUMNS = ["rule", "direction", "action", "peers", "ports", "l7", "packets", "bytes"]


def rules_view(frame: Any) -> Any:
    """`policy rules` in a terminal: a section per policy."""
    shown = frame.astype(object).where(frame.notna(), None)
    shown["policy_section"] = [f"policy {p}" for p in shown.policy]
    return shown[["policy_section"] + RULES_COLUMNS]


def _rules(args: argparse.Namespace) -> TableResult:
    return table_result(args, Lab(args.lab).policy.rules, terminal_view=rules_view, sections="policy_section",
                        empty_text="no policies")


def _trace(args: argparse.Namespace) -> MessageResult:
    report = Lab(args.lab).policy.trace(args.source, args.destination, args.port, args.protocol,
                                        method=args.method, path=args.path)
    data = {k: v for k, v in report.items() if k != "text"}
    # exit code 0 whatever the verdict: the trace itself worked (a DROPPED answer is not an error)
    return MessageResult(str(report), data)


REPLAY_COLUMNS = ["src", "dst", "dst_port", "protocol", "http_method", "http_url", "verdict_now",
                  "verdict_candidate", "drop_reason_desc_candidate"]


def _recorded_flows(args: argparse.Namespace) -> Any:
    """Flows from --input-file (a parquet archive) or the lab's store (--last N newest)."""
    if args.input_file:
        from workbench.observe.archive import load_parquet

        if not Path(args.input_file).is_file():
            raise NotFoundError(f"flow file {args.input_file} does not exist")
        frame = load_parquet(args.input_file)
        return frame.tail(args.last) if args.last else frame
    lab = Lab(args.lab)
    return lab.flows(last=args.last) if args.last else lab.flows()


def replay_view(frame: Any) -> Any:
    """`policy replay` in a terminal; the HTTP columns only when some row is an HTTP request."""
    http = frame.http_method.notna().any()
    return frame[[c for c in REPLAY_COLUMNS if http or not c.startswith("http_")]]


def _replay(args: argparse.Namespace) -> TableResult:
    for path in args.files:
        if not Path(path).is_file():
            raise NotFoundError(f"policy file {path} does not exist")
    frame = Lab(args.lab).policy.replay([Path(p) for p in args.files], _recorded_flows(args), add=args.add)
    a = frame.attrs
    return table_result(args, frame, terminal_view=replay_view,
                        empty_text=f"no verdict would change ({a['judged']} connections and requests judged, "
                                   f"{a['skipped']} skipped: their pods are gone)")


def _suggest(args: argparse.Namespace) -> MessageResult:
    from workbench.policy.replay import connection_starts
    from workbench.policy.suggest import suggest_policies, to_yaml

    docs = suggest_policies(connection_starts(_recorded_flows(args)), args.namespace)
    if not docs:
        return MessageResult("# no forwarded traffic to build a policy from", {"policies": []})
    return MessageResult(to_yaml(docs).rstrip("\n"), {"policies": docs})


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="CiliumNetworkPolicy and NetworkPolicy")
    psub = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    psub.required = True

    apply = psub.add_parser("apply", help="apply policy files (multi-document YAML; all or nothing)")
    apply.add_argument("files", nargs="+", metavar="FILE")
    apply.add_argument("--dry-run", action="store_true", help="show what would change, apply nothing")
    get = psub.add_parser("get", help="the applied policies")
    delete = psub.add_parser("delete", help="delete policies by name, or --all")
    delete.add_argument("names", nargs="*", metavar="NAME")
    delete.add_argument("--all", action="store_true")
    audit = psub.add_parser("audit", help="audit mode: policy drops pass, reported as AUDIT")
    audit.add_argument("state", choices=["on", "off"])
    audit.add_argument("--pod", help="only this pod (default: every endpoint)")
    explain = psub.add_parser("explain", help="the compiled policy, entry by entry, with its sources")
    explain.add_argument("--pod")
    explain.add_argument("--direction", choices=["ingress", "egress"])
    rules = psub.add_parser("rules", help="every rule of the applied policies with its packet/byte counters")
    trace = psub.add_parser("trace", help="the verdict a connection or HTTP request would get now (sends nothing)")
    trace.add_argument("--from", dest="source", required=True, metavar="POD|IP")
    trace.add_argument("--to", dest="destination", required=True, metavar="POD|SERVICE|IP")
    trace.add_argument("--port", type=int, required=True, metavar="N")
    trace.add_argument("--protocol", type=str.upper, choices=["TCP", "UDP"], default="TCP")
    trace.add_argument("--method", metavar="M", help="HTTP method (with --path: judged by the L7 rules)")
    trace.add_argument("--path", metavar="P", help="HTTP request path, query included")
    replay = psub.add_parser("replay", help="recorded flows whose verdict a candidate policy set would change")
    replay.add_argument("files", nargs="+", metavar="FILE")
    replay.add_argument("--add", action="store_true", help="join the applied policies instead of replacing them")
    replay.add_argument("--input-file", metavar="F.parquet", help="flows from an archive, not the lab")
    replay.add_argument("--last", type=int, metavar="N", help="only the N newest flows")
    suggest = psub.add_parser("suggest", help="least-privilege CiliumNetworkPolicy YAML from the flows seen")
    suggest.add_argument("--namespace", "-n", metavar="NS", help="only workloads of this namespace")
    suggest.add_argument("--input-file", metavar="F.parquet", help="flows from an archive, not the lab")
    suggest.add_argument("--last", type=int, metavar="N", help="only the N newest flows")
    suggest.add_argument("-o", "--output", choices=["yaml"], default="yaml", help="YAML documents (the default)")
    for parser, func, add_output_flags in ((apply, _apply, add_table_flags), (get, _get, add_table_flags),
                                           (delete, _delete, add_json_flag), (audit, _audit, add_json_flag),
                                           (explain, _explain, add_table_flags), (rules, _rules, add_table_flags),
                                           (trace, _trace, add_json_flag), (replay, _replay, add_table_flags),
                                           (suggest, _suggest, add_json_flag)):
        add_lab_flag(parser)
        add_output_flags(parser)
        parser.set_defaults(func=func)

    bpf = sub.add_parser("bpf", help="the datapath's maps")
    bsub = bpf.add_subparsers(dest="bpf_command", metavar="MAP")
    bsub.required = True
    bpf_policy = bsub.add_parser("policy", help="the policy map")
    bpsub = bpf_policy.add_subparsers(dest="bpf_policy_command", metavar="SUBCOMMAND")
    bpsub.required = True
    bget = bpsub.add_parser("get", help="entries per endpoint with packet/byte counters")
    bget.add_argument("--pod")
    add_lab_flag(bget)
    add_table_flags(bget)
    bget.set_defaults(func=_bpf_policy_get)
