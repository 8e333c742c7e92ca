"""`policy replay`: what a candidate policy set would do to traffic the lab has already seen.

Two pure steps:

1. :func:`connection_starts` picks, from a flow table (``lab.flows()`` or a
   parquet archive), what a policy judges: the first packet of each
   connection (``policy-verdict`` rows; without any, ``trace`` rows that are no
   replies), once per connection (source/destination address and port,
   protocol), and every HTTP request the L7 proxy saw (``l7`` rows that are no
   replies and carry a method). They become plain records (:data:`RECORD_FIELDS`).
2. :func:`replay` judges each record twice with :func:`~workbench.policy.trace.trace_connection`:
   under the policy in force (``now``) and under the candidate, both against
   the lab's current endpoints, and returns the records whose verdict differs,
   with the candidate's deciding policies.

Addresses are resolved as the datapath would: a current pod's address is the
pod (its audit flag applies to both judgements), any other address the
longest prefix of the ipcache's base entries plus each policy's own CIDR
prefixes (a candidate may give an address a new CIDR identity). Flows from
or to a pod that no longer exists are skipped and counted.

Example::

    >>> starts = connection_starts(lab.flows())                         # doctest: +SKIP
    >>> changed = replay(starts, live, candidate, endpoints, audit, base)  # doctest: +SKIP
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from workbench.errors import ValidationError
from workbench.lab.model import ID_WORLD, Endpoint
from workbench.policy.compiler import CompiledPolicy
from workbench.policy.trace import Party, TraceResult, outside_party, pod_party, trace_connection

RECORD_FIELDS = ["time", "verdict", "event_type", "src_ip", "dst_ip", "src_port", "dst_port", "protocol",
                 "src_identity", "dst_identity", "src_labels", "dst_labels", "src_pod", "dst_pod",
                 "src_namespace", "dst_namespace", "http_method", "http_url"]
RESULT_COLUMNS = ["time", "src", "dst", "protocol", "dst_port", "http_method", "http_url", "verdict",
                  "verdict_now", "verdict_candidate", "drop_reason_desc_candidate", "ingress_allowed_by",
                  "egress_allowed_by", "ingress_denied_by", "egress_denied_by"]
MAX_RECORDS = 200_000   # one request to the agent; more is refused with a hint to narrow the flows
JUDGED_PROTOCOLS = ("TCP", "UDP")


def connection_starts(flows: Any) -> list[dict[str, Any]]:
    """The rows of a flow table a policy judges, as records (see the module docstring)."""
    import pandas as pd

    if flows is None or len(flows) == 0:
        return []
    frame = flows[flows.protocol.astype(str).isin(JUDGED_PROTOCOLS)]
    not_reply = frame.is_reply.fillna(False).astype(bool) == False  # noqa: E712 (a nullable column)
    event = frame.event_type.astype(str)
    verdicts = frame[event == "policy-verdict"]
    if verdicts.empty:
        verdicts = frame[(event == "trace") & not_reply]
    tuple_columns = ["src_ip", "dst_ip", "src_port", "dst_port", "protocol"]
    connections = verdicts.sort_values("time", kind="stable").drop_duplicates(tuple_columns)
    requests = frame[(event == "l7") & not_reply & frame.http_method.notna()]
    chosen = pd.concat([connections, requests]).sort_values("time", kind="stable")
    records = []
    for row in chosen[RECORD_FIELDS].astype(object).to_dict(orient="records"):
        out = {k: (None if _missing(v) else v) for k, v in row.items()}
        out["time"] = str(out["time"]) if out["time"] is not None else None
        for key in ("src_labels", "dst_labels"):
            labels = out[key]
            out[key] = [str(x) for x in labels] if labels is not None else []
        for key in ("src_port", "dst_port", "src_identity", "dst_identity"):
            out[key] = int(out[key] or 0)
        records.append({k: v if isinstance(v, (int, list)) or v is None else str(v) for k, v in out.items()})
    return records


def _missing(value: Any) -> bool:
    try:
        return bool(value != value) or value is None   # NaN / NA
    except (TypeError, ValueError):
        return False


def request_path(url: str) -> str:
    """The path (query included) of an L7 row's URL: "http://deathstar/v1/x?y" -> "/v1/x?y"."""
    rest = url.split("://", 1)[1] if "://" in url else url
    if "://" in url:
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else "/"
    return rest or "/"


def outside_identity(compiled: CompiledPolicy, address: str, base: Mapping[str, int]) -> int:
    """The ipcache's answer for an address no pod has: the longest of the base and the policy's prefixes."""
    ip = ipaddress.IPv4Address(address)
    best, identity = -1, ID_WORLD
    for prefix, number in (*base.items(), *compiled.cidr_identities.items()):
        net = ipaddress.IPv4Network(prefix)
        if ip in net and net.prefixlen > best:
            best, identity = net.prefixlen, number
    return identity


def _party(address: str, compiled: CompiledPolicy, by_ip: Mapping[str, Endpoint], audit: Mapping[int, bool],
           base: Mapping[str, int]) -> Party:
    ep = by_ip.get(address)
    if ep is not None:
        return pod_party(ep, audit)
    return outside_party(address, outside_identity(compiled, address, base), compiled.identity_labels)


def judge_record(record: Mapping[str, Any], compiled: CompiledPolicy, by_ip: Mapping[str, Endpoint],
                 audit: Mapping[int, bool], base: Mapping[str, int]) -> TraceResult:
    """One record under one policy (an L7 record as its HTTP request)."""
    src = _party(str(record["src_ip"]), compiled, by_ip, audit, base)
    dst = _party(str(record["dst_ip"]), compiled, by_ip, audit, base)
    method = str(record["http_method"]) if record.get("http_method") else None
    path = request_path(str(record.get("http_url") or "/")) if method else None
    return trace_connection(compiled, src, dst, str(record["protocol"]), int(record["dst_port"]),
                            method=method, path=path)


def check_record(record: Mapping[str, Any], index: int) -> None:
    """A record from a client must name two IPv4 addresses, a port and TCP or UDP (one-line error if not)."""
    where = f"replay flow {index}"
    for key in ("src_ip", "dst_ip"):
        try:
            ipaddress.IPv4Address(str(record.get(key)))
        except ValueError:
            raise ValidationError(f"{where}: {key} {str(record.get(key))[:40]!r} is not an IPv4 address") from None
    port = record.get("dst_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValidationError(f"{where}: dst_port {str(port)[:20]!r} is not a port number")
    if str(record.get("protocol")).upper() not in JUDGED_PROTOCOLS:
        raise ValidationError(f"{where}: protocol {str(record.get('protocol'))[:20]!r} is not TCP or UDP")
    for key in ("http_method", "http_url"):
        if record.get(key) is not None and not isinstance(record.get(key), str):
            raise ValidationError(f"{where}: {key} must be text")


def _gone(record: Mapping[str, Any], by_ip: Mapping[str, Endpoint]) -> bool:
    """A pod named in the flow that no longer has its address: its policy cannot be judged now."""
    return any(record.get(f"{side}_pod") and str(record[f"{side}_ip"]) not in by_ip for side in ("src", "dst"))


def replay(records: Iterable[Mapping[str, Any]], now: CompiledPolicy, candidate: CompiledPolicy,
           endpoints: Iterable[Endpoint], audit: Mapping[int, bool], base: Mapping[str, int]) -> dict[str, Any]:
    """The records whose verdict would change (``rows``, columns :data:`RESULT_COLUMNS`) and counts.

    ``base``: the ipcache's own prefixes (world, host addresses); ``audit``:
    endpoint id -> audit flag.
    """
    records = list(records)
    if len(records) > MAX_RECORDS:
        raise ValidationError(f"replay got {len(records):,} connections and requests, at most {MAX_RECORDS:,}",
                              hint="narrow the flows (--last N, or filter the DataFrame) first")
    for index, record in enumerate(records):
        check_record(record, index)
    by_ip = {ep.ipv4: ep for ep in endpoints}
    rows, skipped = [], 0
    for record in records:
        if _gone(record, by_ip):
            skipped += 1
            continue
        before = judge_record(record, now, by_ip, audit, base)
        after = judge_record(record, candidate, by_ip, audit, base)
        if before.verdict == after.verdict:
            continue
        judged = after.to_dict()
        rows.append({
            "time": record.get("time"), "src": after.source.name or after.source.address,
            "dst": after.destination.name or after.destination.address, "protocol": after.protocol,
            "dst_port": after.port, "http_method": record.get("http_method"), "http_url": record.get("http_url"),
            "verdict": record.get("verdict"), "verdict_now": before.verdict, "verdict_candidate": after.verdict,
            "drop_reason_desc_candidate": after.drop_reason_desc,
            **{k: judged[k] for k in ("ingress_allowed_by", "egress_allowed_by", "ingress_denied_by",
                                      "egress_denied_by")},
        })
    return {"rows": rows, "judged": len(records) - skipped, "skipped": skipped, "changed": len(rows)}
