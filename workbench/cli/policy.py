"""Policy commands: `policy apply/get/delete/audit/explain` and `bpf policy get`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from workbench.cli.commands import MessageResult, TableResult, add_json_flag
from workbench.lab.names import DEFAULT_LAB


def _policy(args: argparse.Namespace) -> Any:
    from workbench.client.policy import LabPolicy
    from workbench.client.transport import AgentClient

    return LabPolicy(AgentClient(args.name))


def _apply(args: argparse.Namespace) -> MessageResult | TableResult:
    from workbench.errors import NotFoundError

    for path in args.files:
        if not Path(path).is_file():
            raise NotFoundError(f"policy file {path} does not exist")
    outcome = _policy(args).apply([Path(p) for p in args.files], dry_run=args.dry_run)
    if args.dry_run:
        import pandas as pd

        frame = pd.DataFrame(outcome["rows"])
        return TableResult(frame, empty_text=f"dry run: {outcome['summary']} (nothing applied)")
    timing = outcome.get("timing", {})
    return MessageResult(
        f"applied {', '.join(outcome['applied'])}: {outcome['entries']} map entries, "
        f"{len(outcome['enforced'])} enforced endpoint directions"
        + (f", in force after {timing['effective_s'] * 1000:.1f} ms" if timing.get("effective_s") else ""),
        outcome)


def _get(args: argparse.Namespace) -> TableResult:
    frame = _policy(args).get()
    return TableResult(frame.drop(columns=["raw"]) if not args.json else frame, empty_text="no policies")


def _delete(args: argparse.Namespace) -> MessageResult:
    from workbench.errors import ValidationError

    if not args.all and not args.names:
        raise ValidationError("policy delete needs NAME... or --all")
    gone = _policy(args).delete(*args.names, all=args.all)
    return MessageResult(f"deleted {', '.join(gone)}" if gone else "no policies to delete", {"deleted": gone})


def _audit(args: argparse.Namespace) -> MessageResult:
    outcome = _policy(args).audit(args.state == "on", args.pod)
    return MessageResult(f"audit mode {args.state} for {', '.join(outcome['endpoints'])}", outcome)


def _explain(args: argparse.Namespace) -> TableResult:
    return TableResult(_policy(args).explain(args.pod, args.direction), empty_text="no policy entries")


def _bpf_policy_get(args: argparse.Namespace) -> TableResult:
    import pandas as pd

    frame = pd.DataFrame(_policy(args).map)
    if args.pod:
        frame = frame[frame.pod.str.endswith("/" + args.pod) | (frame.pod == args.pod)]
    return TableResult(frame, empty_text="the policy map is empty")


def _lab_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", "-l", "--name", dest="name", default=DEFAULT_LAB,
                        help=f"lab name (default: {DEFAULT_LAB})")


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
    for parser, func in ((apply, _apply), (get, _get), (delete, _delete), (audit, _audit), (explain, _explain)):
        _lab_flag(parser)
        add_json_flag(parser)
        parser.set_defaults(func=func)

    bpf = sub.add_parser("bpf", help="the datapath's maps")
    bsub = bpf.add_subparsers(dest="bpf_command", metavar="MAP")
    bsub.required = True
    bpol = bsub.add_parser("policy", help="the policy map")
    bpsub = bpol.add_subparsers(dest="bpf_policy_command", metavar="SUBCOMMAND")
    bpsub.required = True
    bget = bpsub.add_parser("get", help="entries per endpoint with packet/byte counters")
    bget.add_argument("--pod")
    _lab_flag(bget)
    add_json_flag(bget)
    bget.set_defaults(func=_bpf_policy_get)
