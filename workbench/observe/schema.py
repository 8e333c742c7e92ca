"""The flow table: its columns, their order and dtypes, in one place (docs/flows.md).

Everything that produces or consumes flows (the store, the JSON and parquet
readers, the filters, the renderers) goes through :func:`empty_flows`,
:func:`coerce_flows` and :func:`validate_flows`, so a frame read back from an
archive or from `-o json` is indistinguishable from one the agent built.

Dtype choices and why:

- Small fixed vocabularies (verdict, event_type, direction, protocol, match
  type, drop reason names, HTTP methods) are categoricals with a fixed
  category list, so two frames always agree on their categories.
- Open but small sets (IPs, pods, namespaces, services, TCP flag strings,
  summaries, node name) are categoricals whose categories are the sorted
  values present. Building them from integer codes costs no string copies,
  which is what lets a million-row frame materialise quickly.
- Labels are lists of Cilium label strings ("k8s:class=deathstar") in a
  pyarrow list column; they survive parquet unchanged.
- Values that can be absent are missing (NaN/<NA>), never sentinel numbers:
  http_code and l7_latency_ns are nullable ints, is_reply is a nullable bool.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from workbench.errors import ValidationError

VERDICTS = ["FORWARDED", "DROPPED", "AUDIT", "REDIRECTED", "ERROR"]
EVENT_TYPES = ["trace", "drop", "policy-verdict", "l7"]
DIRECTIONS = ["INGRESS", "EGRESS"]
PROTOCOLS = ["TCP", "UDP", "ICMPv4", "ICMPv6", "SCTP"]
# IP protocol number -> Hubble's protocol name.
IP_PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 1: "ICMPv4", 58: "ICMPv6", 132: "SCTP"}
MATCH_TYPES = ["none", "L3-Only", "L3-L4", "L4-Only", "all"]
HTTP_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
# TCP flag bits in header order, named as Hubble prints them.
TCP_FLAG_BITS = [(0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"),
                 (0x20, "URG"), (0x40, "ECE"), (0x80, "CWR")]

# Cilium's drop reason codes (bpf/lib/common.h, api/v1/flow DropReason) and the
# names Hubble shows in drop_reason_desc. 0 means "not dropped".
DROP_REASONS: dict[int, str] = {
    130: "INVALID_SOURCE_MAC",
    131: "INVALID_DESTINATION_MAC",
    132: "INVALID_SOURCE_IP",
    133: "POLICY_DENIED",
    134: "INVALID_PACKET_DROPPED",
    135: "CT_TRUNCATED_OR_INVALID_HEADER",
    136: "CT_MISSING_TCP_ACK_FLAG",
    137: "CT_UNKNOWN_L4_PROTOCOL",
    138: "CT_CANNOT_CREATE_ENTRY_FROM_PACKET",
    139: "UNSUPPORTED_L3_PROTOCOL",
    140: "MISSED_TAIL_CALL",
    141: "ERROR_WRITING_TO_PACKET",
    142: "UNKNOWN_L4_PROTOCOL",
    143: "UNKNOWN_ICMPV4_CODE",
    144: "UNKNOWN_ICMPV4_TYPE",
    145: "UNKNOWN_ICMPV6_CODE",
    146: "UNKNOWN_ICMPV6_TYPE",
    147: "ERROR_RETRIEVING_TUNNEL_KEY",
    148: "ERROR_RETRIEVING_TUNNEL_OPTIONS",
    149: "INVALID_GENEVE_OPTION",
    150: "UNKNOWN_L3_TARGET_ADDRESS",
    151: "STALE_OR_UNROUTABLE_IP",
    152: "NO_MATCHING_LOCAL_CONTAINER_FOUND",
    153: "ERROR_WHILE_CORRECTING_L3_CHECKSUM",
    154: "ERROR_WHILE_CORRECTING_L4_CHECKSUM",
    155: "CT_MAP_INSERTION_FAILED",
    156: "INVALID_IPV6_EXTENSION_HEADER",
    157: "IP_FRAGMENTATION_NOT_SUPPORTED",
    158: "SERVICE_BACKEND_NOT_FOUND",
    160: "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT",
    161: "FAILED_TO_INSERT_INTO_PROXYMAP",
    162: "REACHED_EDT_RATE_LIMITING_DROP_HORIZON",
    163: "UNKNOWN_CONNECTION_TRACKING_STATE",
    164: "LOCAL_HOST_IS_UNREACHABLE",
    165: "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION",
    166: "UNSUPPORTED_L2_PROTOCOL",
    167: "NO_MAPPING_FOR_NAT_MASQUERADE",
    168: "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE",
    169: "FIB_LOOKUP_FAILED",
    170: "ENCAPSULATION_TRAFFIC_IS_PROHIBITED",
    171: "INVALID_IDENTITY",
    172: "UNKNOWN_SENDER",
    173: "NAT_NOT_NEEDED",
    174: "IS_A_CLUSTERIP",
    175: "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
    176: "FORBIDDEN_ICMPV6_MESSAGE",
    177: "DENIED_BY_LB_SRC_RANGE_CHECK",
    178: "SOCKET_LOOKUP_FAILED",
    179: "SOCKET_ASSIGN_FAILED",
    180: "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL",
    181: "POLICY_DENY",
    182: "VLAN_FILTERED",
    183: "INVALID_VNI",
    184: "INVALID_TC_BUFFER",
    185: "NO_SID",
    186: "MISSING_SRV6_STATE",
    187: "NAT46",
    188: "NAT64",
    189: "AUTH_REQUIRED",
    190: "CT_NO_MAP_FOUND",
    191: "SNAT_NO_MAP_FOUND",
    192: "INVALID_CLUSTER_ID",
    193: "UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP",
    194: "NO_EGRESS_GATEWAY",
    196: "TTL_EXCEEDED",
    197: "NO_NODE_ID",
    202: "DROP_HOST_NOT_READY",
    203: "DROP_EP_NOT_READY",
}
DROP_REASON_UNKNOWN = "DROP_REASON_UNKNOWN"
DROP_REASON_NAMES = [DROP_REASON_UNKNOWN, *DROP_REASONS.values()]
DROP_REASON_CODES = {name: code for code, name in DROP_REASONS.items()}


def drop_reason_name(code: int) -> str:
    """133 -> "POLICY_DENIED"; a code Cilium does not define -> "DROP_REASON_UNKNOWN"."""
    return DROP_REASONS.get(int(code), DROP_REASON_UNKNOWN)


def _fixed(categories: list[str]) -> pd.CategoricalDtype:
    return pd.CategoricalDtype(pd.Index(categories, dtype="str"), ordered=False)


LABELS_DTYPE = pd.ArrowDtype(pa.list_(pa.string()))
DYNAMIC_CATEGORY = "category"  # categories = sorted values present

# name -> dtype, in column order (docs/flows.md).
FLOW_DTYPES: dict[str, Any] = {
    "time": pd.DatetimeTZDtype("ns", "UTC"),
    "verdict": _fixed(VERDICTS),
    "drop_reason": np.dtype("uint16"),
    "drop_reason_desc": _fixed(DROP_REASON_NAMES),
    "event_type": _fixed(EVENT_TYPES),
    "traffic_direction": _fixed(DIRECTIONS),
    "is_reply": pd.BooleanDtype(),
    "ip_version": np.dtype("uint8"),
    "src_ip": DYNAMIC_CATEGORY,
    "dst_ip": DYNAMIC_CATEGORY,
    "protocol": _fixed(PROTOCOLS),
    "src_port": np.dtype("uint16"),
    "dst_port": np.dtype("uint16"),
    "tcp_flags": DYNAMIC_CATEGORY,
    "src_identity": np.dtype("uint32"),
    "dst_identity": np.dtype("uint32"),
    "src_labels": LABELS_DTYPE,
    "dst_labels": LABELS_DTYPE,
    "src_pod": DYNAMIC_CATEGORY,
    "dst_pod": DYNAMIC_CATEGORY,
    "src_namespace": DYNAMIC_CATEGORY,
    "dst_namespace": DYNAMIC_CATEGORY,
    "src_service": DYNAMIC_CATEGORY,
    "dst_service": DYNAMIC_CATEGORY,
    "policy_match_type": _fixed(MATCH_TYPES),
    "http_method": _fixed(HTTP_METHODS),
    "http_url": pd.StringDtype(na_value=np.nan),
    "http_code": pd.Int16Dtype(),
    "l7_latency_ns": pd.Int64Dtype(),
    "bytes": np.dtype("int64"),
    "node_name": DYNAMIC_CATEGORY,
    "summary": DYNAMIC_CATEGORY,
}
COLUMNS = list(FLOW_DTYPES)
FIXED_CATEGORIES = {name: list(dt.categories) for name, dt in FLOW_DTYPES.items()
                    if isinstance(dt, pd.CategoricalDtype)}


def is_dynamic(dtype: Any) -> bool:
    """True for the open-vocabulary categoricals (a CategoricalDtype compares equal to "category" too)."""
    return isinstance(dtype, str) and dtype == DYNAMIC_CATEGORY


DYNAMIC_CATEGORICALS = [name for name, dt in FLOW_DTYPES.items() if is_dynamic(dt)]
LABEL_COLUMNS = ["src_labels", "dst_labels"]


def dynamic_categorical(values: Any) -> pd.Categorical:
    """A categorical whose categories are the sorted distinct non-missing values."""
    series = pd.Series(values, dtype="object")
    present = sorted({str(v) for v in series.dropna().unique()})
    return pd.Categorical(series.where(series.isna(), series.astype(str)),
                          categories=pd.Index(present, dtype="str"))


def empty_flows() -> pd.DataFrame:
    """An empty flow table with the exact columns and dtypes.

    Example::

        >>> list(empty_flows().columns)[:3]
        ['time', 'verdict', 'drop_reason']
    """
    data: dict[str, Any] = {}
    for name, dtype in FLOW_DTYPES.items():
        if is_dynamic(dtype):
            data[name] = pd.Categorical([], categories=pd.Index([], dtype="str"))
        elif isinstance(dtype, pd.CategoricalDtype):
            data[name] = pd.Categorical([], dtype=dtype)
        else:
            data[name] = pd.Series([], dtype=dtype)
    frame = pd.DataFrame(data)
    frame.attrs["lost_events"] = 0
    return frame


def coerce_flows(frame: pd.DataFrame, *, document: str = "flows") -> pd.DataFrame:
    """Convert a frame with the flow columns (from JSON, parquet, by hand) to the exact dtypes.

    Raises ValidationError naming the first missing/foreign column or a value
    outside a fixed vocabulary.
    """
    missing = [c for c in COLUMNS if c not in frame.columns]
    foreign = [c for c in frame.columns if c not in FLOW_DTYPES]
    if missing or foreign:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if foreign:
            parts.append(f"foreign columns {foreign}")
        raise ValidationError(f"{document}: not a flow table: {'; '.join(parts)}",
                              hint=f"expected the columns {COLUMNS}")
    out: dict[str, Any] = {}
    for name, dtype in FLOW_DTYPES.items():
        col = frame[name]
        try:
            out[name] = _coerce_column(name, col, dtype)
        except ValidationError:
            raise
        except (TypeError, ValueError, pa.ArrowException) as err:
            raise ValidationError(f"{document}: column {name!r}: cannot convert to {dtype}: {err}") from err
    result = pd.DataFrame(out)
    result.index = pd.RangeIndex(len(result))
    result.attrs.update(frame.attrs)
    result.attrs.setdefault("lost_events", 0)
    return result


def _coerce_column(name: str, col: pd.Series, dtype: Any) -> Any:
    if name == "time":
        if isinstance(col.dtype, pd.DatetimeTZDtype):
            return col.dt.tz_convert("UTC").astype(dtype)
        return pd.to_datetime(col, utc=True, format="ISO8601").astype(dtype)
    if isinstance(dtype, pd.CategoricalDtype):
        values = col.astype("object")
        unknown = sorted({str(v) for v in values.dropna().unique()} - set(dtype.categories))
        if unknown:
            raise ValidationError(f"column {name!r}: unknown values {unknown}",
                                  hint=f"valid: {list(dtype.categories)}")
        return pd.Categorical(values, dtype=dtype)
    if is_dynamic(dtype):
        return dynamic_categorical(col)
    if dtype is LABELS_DTYPE:
        if isinstance(col.dtype, pd.ArrowDtype):
            arr = pa.array(col.array._pa_array.combine_chunks() if hasattr(col.array, "_pa_array")
                           else col.to_list())
            return pd.array(arr.cast(pa.list_(pa.string())), dtype=LABELS_DTYPE)
        lists = [[] if v is None or (isinstance(v, float) and np.isnan(v)) else [str(x) for x in v]
                 for v in col.to_list()]
        return pd.array(pa.array(lists, type=pa.list_(pa.string())), dtype=LABELS_DTYPE)
    if isinstance(dtype, pd.BooleanDtype):
        return col.astype("object").where(col.notna(), None).astype(dtype)
    if isinstance(dtype, pd.StringDtype):
        return col.astype(dtype)
    return col.astype(dtype)


def validate_flows(frame: pd.DataFrame, *, document: str = "flows") -> None:
    """Raise ValidationError unless ``frame`` has exactly the flow columns, order and dtypes."""
    if list(frame.columns) != COLUMNS:
        raise ValidationError(f"{document}: columns differ from the flow schema",
                              hint=f"got {list(frame.columns)}, expected {COLUMNS}")
    for name, dtype in FLOW_DTYPES.items():
        actual = frame[name].dtype
        if is_dynamic(dtype):
            ok = isinstance(actual, pd.CategoricalDtype)
        elif dtype is LABELS_DTYPE:
            ok = isinstance(actual, pd.ArrowDtype) and pa.types.is_list(actual.pyarrow_dtype)
        elif isinstance(dtype, pd.CategoricalDtype):
            ok = isinstance(actual, pd.CategoricalDtype) and list(actual.categories) == list(dtype.categories)
        else:
            ok = actual == dtype
        if not ok:
            raise ValidationError(f"{document}: column {name!r} has dtype {actual}, expected {dtype}")
