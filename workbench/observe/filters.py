"""`hubble observe` filters over a flow DataFrame or a flow store.

Every filter accepts one value or a list (a list matches any of its values);
different filters must all match. Values are checked: a verdict, type or
protocol outside the vocabulary, or a pod the lab does not have, is a
ValidationError that lists the valid values, never an empty result.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from workbench.errors import ValidationError
from workbench.observe import schema

FILTERS = [
    "verdict", "event_type", "type", "traffic_direction", "drop_reason",
    "from_pod", "to_pod", "pod", "namespace", "from_namespace", "to_namespace",
    "from_label", "to_label", "label", "from_identity", "to_identity", "identity",
    "from_ip", "to_ip", "ip", "from_port", "to_port", "port", "protocol",
    "from_service", "to_service", "service",
    "http_method", "http_path", "http_status", "policy", "fqdn", "from_fqdn", "to_fqdn", "dns_query",
    "since", "until", "last",
]


class FlowSource(Protocol):
    def frame(self, last: int | None = None, after: int | None = None) -> pd.DataFrame: ...

    def known_pods(self) -> list[str]: ...


def _values(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple, set)):
        return list(value)
    return [value]


def _choose(name: str, value: Any, vocabulary: list[str], *, fold: Any = str.upper) -> list[str]:
    """Normalise each value into ``vocabulary`` (case-insensitive) or raise listing it."""
    index = {fold(v): v for v in vocabulary}
    out = []
    for v in _values(value):
        key = fold(str(v))
        if key not in index:
            raise ValidationError(f"unknown {name} {v!r}", hint=f"valid: {', '.join(vocabulary)}")
        out.append(index[key])
    return out


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d)\s*$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: Any, name: str = "since", now: pd.Timestamp | None = None) -> pd.Timestamp:
    """A datetime, an ISO timestamp, or a duration ago ("5m", "30s", "1h") -> UTC Timestamp."""
    if isinstance(value, str):
        match = DURATION.match(value)
        if match:
            now = now if now is not None else pd.Timestamp.now(tz="UTC")
            return now - pd.Timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    if isinstance(value, (dt.timedelta, pd.Timedelta)):
        return (now if now is not None else pd.Timestamp.now(tz="UTC")) - pd.Timedelta(value)
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as err:
        raise ValidationError(f"{name}: {value!r} is neither a time nor a duration",
                              hint='use e.g. "5m", "2h", or "2026-11-26T06:40:00Z"') from err
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _pods_mask(frame: pd.DataFrame, side: str, values: list[str], known: list[str]) -> np.ndarray:
    """Hubble's pod filter: "pod" or "namespace/pod", the name matching as a prefix."""
    mask = np.zeros(len(frame), bool)
    pods, nss = frame[f"{side}_pod"], frame[f"{side}_namespace"]
    pod_names = _distinct(pods)
    for value in values:
        namespace, _, pod = str(value).rpartition("/")
        if known and not any(_pod_matches(k, namespace, pod) for k in known):
            raise ValidationError(f"unknown pod {value!r}", hint=f"pods: {', '.join(sorted(set(known)))}")
        # Decide per distinct pod name (a handful), then select rows with isin.
        hit = pods.isin([p for p in pod_names if p.startswith(pod)]).to_numpy(bool, copy=True)
        if namespace:
            hit &= (nss == namespace).to_numpy(bool)
        mask |= hit
    return mask


def _pods_in(frame: pd.DataFrame) -> set[str]:
    """"namespace/pod" of both sides, from the distinct pairs (no per-row Python)."""
    out: set[str] = set()
    for side in ("src", "dst"):
        pairs = frame[[f"{side}_namespace", f"{side}_pod"]].dropna(subset=[f"{side}_pod"]).drop_duplicates()
        out.update(f"{'' if pd.isna(ns) else ns}/{pod}" for ns, pod in pairs.itertuples(index=False))
    return out


def _distinct(column: pd.Series) -> list[str]:
    if isinstance(column.dtype, pd.CategoricalDtype):
        return [str(c) for c in column.cat.categories]
    return [str(v) for v in column.dropna().unique()]


def _pod_matches(known: str, namespace: str, pod: str) -> bool:
    known_ns, _, known_pod = known.rpartition("/")
    if namespace and known_ns and known_ns != namespace:
        return False
    return known_pod.startswith(pod)


def _strip_source(label: str) -> str:
    source, sep, rest = label.partition(":")
    return rest if sep and "=" not in source else label


def _labels_mask(frame: pd.DataFrame, side: str, selectors: list[str]) -> np.ndarray:
    """Each selector is "k=v[,k2=v2]" (all must hold); a list of selectors matches any.

    A term without a source ("class=deathstar") matches any source; "k8s:class=..."
    must match exactly; a bare key ("class") matches any value.
    """
    result = np.zeros(len(frame), bool)
    if not len(frame):
        return result
    lists = _as_list_array(frame[f"{side}_labels"])
    encoded = pc.list_flatten(lists).dictionary_encode()   # hash once; decide per distinct label
    uniq = np.array(encoded.dictionary.to_pylist(), dtype=object)
    inverse = encoded.indices.to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(lists).to_numpy()
    stripped = np.array([_strip_source(x) for x in uniq], dtype=object)
    for selector in selectors:
        rows = np.ones(len(frame), bool)
        for term in [t.strip() for t in str(selector).split(",") if t.strip()]:
            if ":" in term.split("=", 1)[0]:
                term_hit = uniq == term
            elif "=" in term:
                term_hit = stripped == term
            else:
                term_hit = np.array([s.split("=", 1)[0] == term for s in stripped], bool)
            flat_hit = np.asarray(term_hit, bool)[inverse.reshape(-1)]
            per_row = np.bincount(parents[flat_hit], minlength=len(frame)) > 0 if flat_hit.any() \
                else np.zeros(len(frame), bool)
            rows &= per_row
        result |= rows
    return result


def _as_list_array(column: pd.Series) -> pa.Array:
    arr = pa.array(column.array) if isinstance(column.dtype, pd.ArrowDtype) else \
        pa.array(column.to_list(), type=pa.list_(pa.string()))
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _policy_names(frame: pd.DataFrame) -> set[str]:
    """The policy keys named in the frame's four attribution columns."""
    names: set[str] = set()
    for column in schema.POLICY_COLUMNS:
        if len(frame):
            names.update(str(v) for v in pc.unique(pc.list_flatten(_as_list_array(frame[column]))).to_pylist())
    return names


def resolve_policy(value: str, known: set[str]) -> str:
    """"namespace/name" as it is; a bare "name" -> the one known key it names (a clusterwide policy's
    key is its bare name; else the namespaced key ending in "/name").

    Example::

        >>> resolve_policy("rule1", {"default/rule1", "default/other"})
        'default/rule1'
    """
    text = str(value).strip()
    if not text:
        raise ValidationError("policy: empty name", hint='give "name" or "namespace/name"')
    if "/" in text or text in known:
        return text
    matches = sorted(k for k in known if k.rpartition("/")[2] == text)
    if len(matches) > 1:
        raise ValidationError(f"policy {text!r} is ambiguous: {', '.join(matches)}",
                              hint="give it as namespace/name")
    return matches[0] if matches else text


def _policy_mask(frame: pd.DataFrame, values: list[str], known: set[str] | None) -> np.ndarray:
    """Flows one of the policies decided: any of the four attribution lists names it."""
    candidates = _policy_names(frame) | (known or set())
    wanted = {resolve_policy(v, candidates) for v in values}
    if known is not None:
        unknown = sorted(wanted - candidates)
        if unknown:
            raise ValidationError(f"unknown policy {unknown[0]!r}",
                                  hint=f"policies: {', '.join(sorted(candidates)) or 'none applied'}")
    mask = np.zeros(len(frame), bool)
    if not len(frame):
        return mask
    lookup = pa.array(sorted(wanted), pa.string())
    for column in schema.POLICY_COLUMNS:
        lists = _as_list_array(frame[column])
        hit = pc.is_in(pc.list_flatten(lists), value_set=lookup).to_numpy(zero_copy_only=False)
        if hit.any():
            parents = pc.list_parent_indices(lists).to_numpy()
            mask |= np.bincount(parents[hit], minlength=len(frame)) > 0
    return mask


_FQDN_PATTERN = re.compile(r"^[-0-9_a-z.*]+$")


def fqdn_regex(patterns: list[str]) -> re.Pattern[str]:
    """Hubble's FQDN patterns as one anchored regex: case folded, one trailing dot dropped, "*" any run of
    ``[-.0-9a-z]`` (so "*.github.com" also matches "a.b.github.com"); other characters are an error.

    Example::

        >>> bool(fqdn_regex(["*.github.com."]).fullmatch("api.github.com"))
        True
    """
    parts = []
    for pattern in patterns:
        text = str(pattern).strip()
        text = text[:-1] if text.endswith(".") else text
        text = text.lower()
        if not text:
            raise ValidationError("fqdn: empty pattern", hint='e.g. "api.github.com" or "*.github.com"')
        if text.endswith("."):
            raise ValidationError(f"fqdn: {pattern!r} has more than one trailing dot")
        if not _FQDN_PATTERN.match(text):
            raise ValidationError(f"fqdn: invalid pattern {pattern!r}",
                                  hint='only letters, digits, "-", "_", "." and "*" are allowed')
        parts.append(re.escape(text).replace(r"\*", "[-.0-9a-z]*"))
    return re.compile(rf"(?:{'|'.join(parts)})")


def _names_mask(frame: pd.DataFrame, side: str, regex: re.Pattern[str]) -> np.ndarray:
    """Rows whose ``{side}_names`` has a name the regex matches whole (decided once per distinct name)."""
    if not len(frame):
        return np.zeros(0, bool)
    lists = _as_list_array(frame[f"{side}_names"])
    flat = pc.list_flatten(lists)
    if not len(flat):
        return np.zeros(len(frame), bool)
    encoded = flat.dictionary_encode()
    hit = np.array([regex.fullmatch(str(n)) is not None for n in encoded.dictionary.to_pylist()], bool)
    flat_hit = hit[encoded.indices.to_numpy(zero_copy_only=False)]
    if not flat_hit.any():
        return np.zeros(len(frame), bool)
    parents = pc.list_parent_indices(lists).to_numpy()
    return np.bincount(parents[flat_hit], minlength=len(frame)) > 0


def _regex_mask(column: pd.Series, name: str, patterns: list[Any]) -> np.ndarray:
    """Rows whose text matches (re.search, as Go's MatchString) any pattern; missing text never does."""
    hit = np.zeros(len(column), bool)
    codes, texts = pd.factorize(column)   # the regexes run once per distinct value
    for pattern in patterns:
        try:
            regex = re.compile(str(pattern))
        except re.error as err:
            raise ValidationError(f"{name}: invalid regular expression {pattern!r}: {err}") from err
        matches = np.array([regex.search(str(t)) is not None for t in texts] + [False], bool)
        hit |= matches[codes]
    return hit


def _ip_mask(series: pd.Series, values: list[str]) -> np.ndarray:
    mask = np.zeros(len(series), bool)
    addresses = _distinct(series)
    for value in values:
        try:
            net = ipaddress.ip_network(str(value), strict=False)
        except ValueError as err:
            raise ValidationError(f"invalid IP or CIDR {value!r}") from err
        # Decide per distinct address, then select rows with isin.
        inside = [a for a in addresses if ipaddress.ip_address(a) in net]
        mask |= series.isin(inside).to_numpy(bool)
    return mask


def _status_mask(codes: pd.Series, values: list[Any]) -> np.ndarray:
    mask = np.zeros(len(codes), bool)
    filled = codes.fillna(-1).astype("int64").to_numpy()
    for value in values:
        text = str(value).strip()
        if re.fullmatch(r"[1-5]\+", text):  # "4+": any 4xx, as hubble observe --http-status
            base = int(text[0]) * 100
            mask |= (filled >= base) & (filled < base + 100)
        elif re.fullmatch(r"\d{3}", text):
            mask |= filled == int(text)
        else:
            raise ValidationError(f"invalid HTTP status {value!r}", hint='use e.g. 403 or "5+"')
    return mask


def _int_values(name: str, value: Any, limit: int) -> list[int]:
    out = []
    for v in _values(value):
        try:
            number = int(v)
        except (TypeError, ValueError) as err:
            raise ValidationError(f"{name}: {v!r} is not a number") from err
        if not 0 <= number <= limit:
            raise ValidationError(f"{name}: {number} is out of range 0..{limit}")
        out.append(number)
    return out


def flows(source: pd.DataFrame | FlowSource, **filters: Any) -> pd.DataFrame:
    """Flows matching all given filters, oldest first; ``attrs["lost_events"]`` carried over.

    Filters: verdict, event_type (alias type), traffic_direction, drop_reason
    (name or code), from_pod/to_pod/pod ("pod" or "ns/pod", prefix match),
    namespace/from_namespace/to_namespace, from_label/to_label/label ("k=v",
    "k8s:k=v", "k=v,k2=v2"), from_identity/to_identity/identity,
    from_ip/to_ip/ip (address or CIDR), from_port/to_port/port, protocol,
    from_service/to_service/service, http_method, http_path (regex),
    http_status (403 or "4+"), policy ("namespace/name", or "name" when one
    policy has it: the flows whose ``*_allowed_by``/``*_denied_by`` name it),
    fqdn/from_fqdn/to_fqdn (Hubble's FQDN pattern, "*.github.com", over
    ``src_names``/``dst_names``), dns_query (regex over ``dns_query``),
    since/until (time or "5m"), last (N newest).

    Example::

        >>> from workbench.observe.schema import empty_flows
        >>> len(flows(empty_flows(), verdict="DROPPED", port=80))
        0
    """
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise ValidationError(f"unknown flow filter {unknown[0]!r}", hint=f"filters: {', '.join(FILTERS)}")
    filters = {k: v for k, v in filters.items() if v is not None and not (isinstance(v, (list, tuple)) and not v)}
    if isinstance(source, pd.DataFrame):
        frame = source
        known = sorted(set(frame.attrs.get("known_pods", [])) | _pods_in(frame))
    else:
        frame = source.frame()
        known = source.known_pods()
    last = filters.pop("last", None)
    if last is not None:
        last = _int_values("last", last, 2**62)[0]
    mask = np.ones(len(frame), bool)

    def cat_filter(column: str, values: list[str]) -> None:
        nonlocal mask
        mask &= frame[column].isin(values).to_numpy(bool)

    for name, value in filters.items():
        if name == "verdict":
            cat_filter("verdict", _choose("verdict", value, schema.VERDICTS))
        elif name in ("event_type", "type"):
            cat_filter("event_type", _choose("event type", value, schema.EVENT_TYPES, fold=str.lower))
        elif name == "traffic_direction":
            cat_filter("traffic_direction", _choose("traffic direction", value, schema.DIRECTIONS))
        elif name == "drop_reason":
            names = [schema.drop_reason_name(int(v)) if str(v).isdigit() else v for v in _values(value)]
            cat_filter("drop_reason_desc", _choose("drop reason", names, schema.DROP_REASON_NAMES))
        elif name == "protocol":
            cat_filter("protocol", _choose("protocol", value, schema.PROTOCOLS))
        elif name == "http_method":
            cat_filter("http_method", _choose("HTTP method", value, schema.HTTP_METHODS))
        elif name in ("from_pod", "to_pod"):
            mask &= _pods_mask(frame, "src" if name == "from_pod" else "dst", _values(value), known)
        elif name == "pod":
            mask &= _pods_mask(frame, "src", _values(value), known) | _pods_mask(frame, "dst", _values(value), known)
        elif name in ("from_namespace", "to_namespace", "namespace"):
            sides = {"from_namespace": ["src"], "to_namespace": ["dst"], "namespace": ["src", "dst"]}[name]
            hit = np.zeros(len(frame), bool)
            for side in sides:
                hit |= frame[f"{side}_namespace"].isin(_values(value)).to_numpy(bool)
            mask &= hit
        elif name in ("from_service", "to_service", "service"):
            sides = {"from_service": ["src"], "to_service": ["dst"], "service": ["src", "dst"]}[name]
            hit = np.zeros(len(frame), bool)
            for side in sides:
                hit |= frame[f"{side}_service"].isin(_values(value)).to_numpy(bool)
            mask &= hit
        elif name in ("from_label", "to_label", "label"):
            selectors = [str(v) for v in _values(value)]
            if name == "label":
                mask &= _labels_mask(frame, "src", selectors) | _labels_mask(frame, "dst", selectors)
            else:
                mask &= _labels_mask(frame, "src" if name == "from_label" else "dst", selectors)
        elif name in ("from_identity", "to_identity", "identity"):
            ids = _int_values(name, value, 2**32 - 1)
            if name == "identity":
                mask &= (frame.src_identity.isin(ids) | frame.dst_identity.isin(ids)).to_numpy(bool)
            else:
                mask &= frame["src_identity" if name == "from_identity" else "dst_identity"].isin(ids).to_numpy(bool)
        elif name in ("from_ip", "to_ip", "ip"):
            values = [str(v) for v in _values(value)]
            if name == "ip":
                mask &= _ip_mask(frame.src_ip, values) | _ip_mask(frame.dst_ip, values)
            else:
                mask &= _ip_mask(frame["src_ip" if name == "from_ip" else "dst_ip"], values)
        elif name in ("from_port", "to_port", "port"):
            ports = _int_values(name, value, 65535)
            if name == "port":
                mask &= (frame.src_port.isin(ports) | frame.dst_port.isin(ports)).to_numpy(bool)
            else:
                mask &= frame["src_port" if name == "from_port" else "dst_port"].isin(ports).to_numpy(bool)
        elif name == "http_path":
            hit = np.zeros(len(frame), bool)
            for pattern in _values(value):
                try:
                    regex = re.compile(str(pattern))
                except re.error as err:
                    raise ValidationError(f"http_path: invalid regular expression {pattern!r}: {err}") from err
                codes, urls = pd.factorize(frame.http_url)   # regex once per distinct URL
                matches = np.array([regex.search(_url_path(str(u))) is not None for u in urls] + [False], bool)
                hit |= matches[codes]
            mask &= hit
        elif name in ("from_fqdn", "to_fqdn", "fqdn"):
            regex = fqdn_regex([str(v) for v in _values(value)])
            sides = {"from_fqdn": ["src"], "to_fqdn": ["dst"], "fqdn": ["src", "dst"]}[name]
            hit = np.zeros(len(frame), bool)
            for side in sides:
                hit |= _names_mask(frame, side, regex)
            mask &= hit
        elif name == "dns_query":
            mask &= _regex_mask(frame.dns_query, "dns_query", _values(value))
        elif name == "http_status":
            mask &= _status_mask(frame.http_code, _values(value))
        elif name == "policy":
            known = frame.attrs.get("known_policies")
            mask &= _policy_mask(frame, [str(v) for v in _values(value)],
                                 None if known is None else set(known))
        elif name == "since":
            mask &= (frame.time >= parse_time(value, "since")).to_numpy(bool)
        elif name == "until":
            mask &= (frame.time <= parse_time(value, "until")).to_numpy(bool)
    result = frame[mask]
    if last is not None:
        result = result.iloc[max(len(result) - last, 0):]
    result = result.reset_index(drop=True)
    result.attrs = dict(frame.attrs)
    result.attrs.setdefault("lost_events", 0)
    return result


def _url_path(url: str) -> str:
    """"http://deathstar/v1/x?y" -> "/v1/x?y"; a bare path stays as it is."""
    match = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*(.*)$", url)
    return (match.group(1) or "/") if match else url
