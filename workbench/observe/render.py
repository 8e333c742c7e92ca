"""Flows as text: Hubble's compact one-liners, an aligned table, and JSON lines.

JSON lines carry exactly the flow columns, one flow per line, and read back with
:func:`read_json_lines` into a frame equal to the one written (dtypes
included). A lost-events count travels as its own line
``{"lost_events": N}``, as `hubble observe -o json` reports lost events.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd

from workbench.datapath import abi
from workbench.errors import ValidationError
from workbench.observe import schema

_POLICY_WORD = {"FORWARDED": "ALLOWED", "DROPPED": "DENIED", "AUDIT": "AUDITED", "REDIRECTED": "REDIRECTED",
                "ERROR": "ERROR"}


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def _endpoint(row: Any, side: str) -> str:
    """"ns/pod:port"; without a pod the DNS names known for the address ("api.github.com:443"), else the IP."""
    pod, ns = getattr(row, f"{side}_pod"), getattr(row, f"{side}_namespace")
    port = int(getattr(row, f"{side}_port"))
    names = _listed(getattr(row, f"{side}_names", None))
    if not _missing(pod):
        name = f"{ns}/{pod}"
    elif names:
        name = ",".join(str(n) for n in names)
    else:
        name = str(getattr(row, f"{side}_ip"))
    return f"{name}:{port}" if port else name


def _l7_kind(row: Any) -> str:
    """Hubble's L7 flow type: dns-request / dns-response / http-request / http-response."""
    if not _missing(getattr(row, "dns_query", None)):
        return "dns-response" if not _missing(row.dns_rcode) else "dns-request"
    return "http-response" if not _missing(row.http_code) else "http-request"


def _identity(row: Any, side: str) -> str:
    ident = int(getattr(row, f"{side}_identity"))
    labels = getattr(row, f"{side}_labels")
    if ident in (1, 2, 4) and labels is not None and len(labels):
        return f"({labels[0].split(':', 1)[-1]})"
    return f"(ID:{ident})"


def compact_line(row: Any) -> str:
    """One flow in Hubble's compact style.

    ``Nov 26 06:40:01.123: default/xwing:41234 (ID:258) -> default/deathstar-6c94dcc57b-6chpk:80
    (ID:257) policy-verdict:none INGRESS DENIED (TCP Flags: SYN)``; a flow a policy decided ends
    with ``(allowed by default/rule1)`` or ``(denied by default/no-xwing)``. DNS rows read
    ``dns-request FORWARDED (DNS Query api.github.com. A)``; an address with known DNS names
    and no pod shows the names (``api.github.com:443``), as Hubble does.
    """
    stamp = row.time.strftime("%b %d %H:%M:%S.") + f"{row.time.microsecond // 1000:03d}"
    event, verdict = str(row.event_type), str(row.verdict)
    if event == "policy-verdict":
        what = f"policy-verdict:{row.policy_match_type} {row.traffic_direction} {_POLICY_WORD.get(verdict, verdict)}"
    elif event == "drop":
        what = f"{row.drop_reason_desc} DROPPED"
    elif event == "l7":
        what = f"{_l7_kind(row)} {verdict}"
    else:
        point = abi.TRACE_POINT_BY_DIRECTION.get(str(row.traffic_direction), "trace")
        what = f"{point} {verdict}"
    # Hubble's arrows: a reply is printed from the client's side ("client <- server"), so the side that
    # opened the connection is always on the left; "<>" when the datapath could not tell.
    left, right, arrow = "src", "dst", "->"
    if row.is_reply is pd.NA or row.is_reply is None:
        arrow = "<>"
    elif bool(row.is_reply):
        left, right, arrow = "dst", "src", "<-"
    return (f"{stamp}: {_endpoint(row, left)} {_identity(row, left)} {arrow} "
            f"{_endpoint(row, right)} {_identity(row, right)} {what} ({row.summary}){_attribution(row)}")


def _listed(value: Any) -> list[Any]:
    """A list cell (Arrow list, numpy array, list) as a list; missing -> []."""
    if value is None or (isinstance(value, float) and value != value):
        return []
    return list(value)


def _attribution(row: Any) -> str:
    """" (allowed by default/rule1)" / " (denied by default/no-world)" from the four policy columns, or ""."""
    parts = []
    for word, columns in (("allowed", ("ingress_allowed_by", "egress_allowed_by")),
                          ("denied", ("ingress_denied_by", "egress_denied_by"))):
        names = [str(n) for c in columns for n in _listed(getattr(row, c, None))]
        if names:
            parts.append(f" ({word} by {', '.join(dict.fromkeys(names))})")
    return "".join(parts)


def lost_line(frame: pd.DataFrame) -> str | None:
    lost = int(frame.attrs.get("lost_events", 0) or 0)
    return f"EVENTS LOST: {lost}" if lost else None


def format_compact(frame: pd.DataFrame) -> str:
    lines = [compact_line(row) for row in frame.itertuples(index=False)]
    lost = lost_line(frame)
    return "\n".join(([lost] if lost else []) + lines)


def format_table(frame: pd.DataFrame) -> str:
    """Aligned columns like `hubble observe -o table`."""
    header = ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    rows = []
    for row in frame.itertuples(index=False):
        event = str(row.event_type)
        if event == "policy-verdict":
            kind = f"policy-verdict:{row.policy_match_type} {row.traffic_direction}"
        elif event == "drop":
            kind = str(row.drop_reason_desc)
        elif event == "trace":
            kind = abi.TRACE_POINT_BY_DIRECTION.get(str(row.traffic_direction), "trace")
        else:
            kind = _l7_kind(row)
        stamp = row.time.strftime("%b %d %H:%M:%S.") + f"{row.time.microsecond // 1000:03d}"
        rows.append([stamp, _endpoint(row, "src"), _endpoint(row, "dst"), kind, str(row.verdict), str(row.summary)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lost = lost_line(frame)
    return "\n".join(([lost] if lost else []) + lines)


def _with_iso_times(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with ``time`` as nanosecond ISO text (pandas' own ISO writer rounds to microseconds)."""
    out = frame.copy()
    stamps = frame["time"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")
    out["time"] = np.char.add(np.datetime_as_string(stamps, unit="ns"), "Z")
    return out


def flow_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The flows as JSON-ready dicts (the fields of :func:`to_json_lines`), for one JSON document."""
    return list(json.loads(_with_iso_times(frame).to_json(orient="records"))) if len(frame) else []


def to_json_lines(frame: pd.DataFrame) -> str:
    """One JSON object per flow with the flow columns; nanosecond ISO times; lost events as a first line."""
    body = _with_iso_times(frame).to_json(orient="records", lines=True) if len(frame) else ""
    lost = int(frame.attrs.get("lost_events", 0) or 0)
    head = json.dumps({"lost_events": lost}) + "\n" if lost else ""
    return head + body.rstrip("\n")


def read_json_lines(text: str, *, document: str = "JSON flows") -> pd.DataFrame:
    """Parse :func:`to_json_lines` output back into a flow frame (dtypes restored)."""
    records = []
    lost = 0
    for number, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValidationError(f"{document}: line {number} is not JSON: {err.msg}") from err
        if isinstance(obj, dict) and set(obj) == {"lost_events"}:
            lost += int(obj["lost_events"])
            continue
        if not isinstance(obj, dict):
            raise ValidationError(f"{document}: line {number} is not a JSON object")
        records.append(obj)
    if not records:
        frame = schema.empty_flows()
    else:
        raw = pd.DataFrame.from_records(records)
        frame = schema.coerce_flows(raw, document=document)
    frame.attrs["lost_events"] = lost
    return frame


def render(frame: pd.DataFrame, output: str = "compact") -> str:
    """Text for ``-o table|compact|json``."""
    if output == "json":
        return to_json_lines(frame)
    if output == "table":
        return format_table(frame)
    if output == "compact":
        return format_compact(frame)
    raise ValidationError(f"unknown output format {output!r}", hint="valid: table, compact, json")
