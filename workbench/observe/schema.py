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
- Policy attribution (Hubble's ``ingress_allowed_by``, ``egress_allowed_by``,
  ``ingress_denied_by``, ``egress_denied_by``) are list columns of the same
  type, holding "namespace/name" keys ("name" for a clusterwide policy); an
  empty list, never missing, when no policy is named.
- Values that can be absent are missing (NaN/<NA>), never sentinel numbers:
  http_code, l7_latency_ns, dns_rcode and dns_ttl are nullable ints, is_reply
  is a nullable bool.
- DNS (Hubble's ``l7.dns`` and ``source_names`` / ``destination_names``):
  ``dns_query`` is the queried name as the wire has it, with its trailing dot
  ("api.github.com."); the lists (``dns_qtypes``, ``dns_ips``, ``src_names``,
  ``dst_names``) are list columns like the labels, empty on rows without them;
  names are written without the trailing dot ("api.github.com"), as Hubble does.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from workbench.datapath import abi
from workbench.errors import ValidationError

# The fixed vocabularies come from the datapath's one vocabulary (workbench.datapath.abi), in its
# order; a flow never carries the "unknown" verdict, and "l7" rows come from the proxy.
VERDICTS = [name for code, name in abi.VERDICT_NAMES.items() if code != abi.VERDICT_UNKNOWN]
EVENT_TYPES = [*dict.fromkeys(abi.FLOW_EVENT_TYPE_NAMES.values()), abi.FLOW_EVENT_L7]
DIRECTIONS = list(abi.DIRECTION_NAMES.values())
PROTOCOLS = list(abi.PROTOCOL_NAMES.values())
MATCH_TYPES = list(abi.MATCH_TYPE_NAMES.values())
HTTP_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
# drop_reason_desc: Hubble's DropReason enum names; 0 (and any code Cilium lacks) is DROP_REASON_UNKNOWN.
DROP_REASONS = abi.DROP_REASON_NAMES
DROP_REASON_UNKNOWN = abi.DROP_REASON_UNKNOWN
DROP_REASON_NAMES = [DROP_REASON_UNKNOWN, *DROP_REASONS.values()]
drop_reason_name = abi.drop_reason_name


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
    "ingress_allowed_by": LABELS_DTYPE,
    "egress_allowed_by": LABELS_DTYPE,
    "ingress_denied_by": LABELS_DTYPE,
    "egress_denied_by": LABELS_DTYPE,
    "http_method": _fixed(HTTP_METHODS),
    "http_url": pd.StringDtype(na_value=np.nan),
    "http_code": pd.Int16Dtype(),
    "l7_latency_ns": pd.Int64Dtype(),
    "dns_query": pd.StringDtype(na_value=np.nan),
    "dns_rcode": pd.Int16Dtype(),
    "dns_qtypes": LABELS_DTYPE,
    "dns_ips": LABELS_DTYPE,
    "dns_ttl": pd.UInt32Dtype(),
    "src_names": LABELS_DTYPE,
    "dst_names": LABELS_DTYPE,
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
# Hubble's policy attribution: (direction, allowed?) -> column.
POLICY_COLUMNS = ["ingress_allowed_by", "egress_allowed_by", "ingress_denied_by", "egress_denied_by"]
# DNS: the query's types and the answer's addresses; the names the agent learned for each side's IP.
DNS_LIST_COLUMNS = ["dns_qtypes", "dns_ips"]
NAME_COLUMNS = ["src_names", "dst_names"]
LIST_COLUMNS = LABEL_COLUMNS + POLICY_COLUMNS + DNS_LIST_COLUMNS + NAME_COLUMNS


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


# -- Arrow: the one conversion used by the parquet files and the agent socket ---------------------

def _has_exact_dtype(actual: Any, dtype: Any) -> bool:
    if is_dynamic(dtype):  # also the categories' own dtype: an empty Arrow dictionary comes back as object
        return isinstance(actual, pd.CategoricalDtype) and actual.categories.dtype == "str"
    if dtype is LABELS_DTYPE:
        return bool(actual == LABELS_DTYPE)
    return bool(actual == dtype)


def _arrow_list_dtype(arrow_type: pa.DataType) -> Any:
    """types_mapper for Table.to_pandas: label lists stay Arrow lists (not object arrays of numpy arrays)."""
    return pd.ArrowDtype(arrow_type) if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) else None


def flows_to_arrow(frame: pd.DataFrame) -> pa.Table:
    """A flow frame as an Arrow table that pandas, DuckDB and Polars all read.

    Categoricals become ``dictionary<int32, string>`` whatever their number of
    categories, so tables written at different times share one schema. The
    pandas metadata pyarrow attaches names the label columns' dtype as
    "list<item: string>[pyarrow]", which ``pandas.read_parquet`` cannot parse;
    it says "object" instead (what a plain reader gets: arrays of strings),
    and :func:`flows_from_arrow` maps them back to Arrow lists. ``frame.attrs``
    travel in that metadata.

    Example::

        >>> flows_to_arrow(empty_flows()).schema.field("verdict").type
        DictionaryType(dictionary<values=string, indices=int32, ordered=0>)
    """
    table = pa.Table.from_pandas(frame, preserve_index=False)
    fields = [pa.field(f.name, pa.dictionary(pa.int32(), pa.string()), f.nullable)
              if pa.types.is_dictionary(f.type) else f for f in table.schema]
    metadata = dict(table.schema.metadata or {})
    if b"pandas" in metadata:
        pandas_meta = json.loads(metadata[b"pandas"])
        for column in pandas_meta["columns"]:
            if column["name"] in LIST_COLUMNS:
                column["numpy_type"] = "object"
        metadata[b"pandas"] = json.dumps(pandas_meta).encode()
    return table.cast(pa.schema(fields, metadata=metadata))


def flows_from_arrow(table: pa.Table, *, document: str = "flows") -> pd.DataFrame:
    """An Arrow table of flows (from :func:`flows_to_arrow`, parquet or IPC) as a frame with the exact dtypes.

    Columns that already have their dtype are taken as they are (no copy of
    the categories); the rest go through :func:`coerce_flows`' conversions.
    Raises ValidationError when the columns are not the flow table's.
    """
    names = table.schema.names
    if names != COLUMNS:
        missing = [c for c in COLUMNS if c not in names]
        foreign = [c for c in names if c not in FLOW_DTYPES]
        detail = "; ".join(part for part in (f"missing columns {missing}" if missing else "",
                                             f"foreign columns {foreign}" if foreign else "",
                                             "columns out of order" if not (missing or foreign) else "") if part)
        raise ValidationError(f"{document}: not a workbench flow table: {detail}")
    try:
        raw = table.to_pandas(types_mapper=_arrow_list_dtype)
    except (pa.ArrowException, ValueError, TypeError) as err:
        raise ValidationError(f"{document}: cannot convert to a flow table ({err})") from err
    out: dict[str, Any] = {}
    for name, dtype in FLOW_DTYPES.items():
        column = raw[name]
        if _has_exact_dtype(column.dtype, dtype):
            out[name] = column
            continue
        try:
            out[name] = _coerce_column(name, column, dtype)
        except ValidationError as err:
            raise ValidationError(f"{document}: {err}") from err
        except (TypeError, ValueError, pa.ArrowException) as err:
            raise ValidationError(f"{document}: column {name!r}: cannot convert to {dtype}: {err}") from err
    frame = pd.DataFrame(out)
    frame.attrs.update(raw.attrs)
    frame.attrs["lost_events"] = int(raw.attrs.get("lost_events", 0) or 0)
    return frame
