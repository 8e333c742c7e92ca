"""The flow store inside the agent: batches of raw events in, DataFrames out.

Events arrive as numpy structured arrays (see events.py; their codes get
their names from workbench/datapath/abi.py), are enriched with vectorised
lookups (enrich.py), and land in a ring of preallocated column arrays holding
the last ``capacity`` flows (:data:`DEFAULT_CAPACITY`, as Hubble). The ring
stores small integer codes (interned strings, category indices), so appending
a batch copies a few bytes per event and a DataFrame is built only when
someone asks for one.

Policy attribution: a policy-verdict or drop event carries the cookie of the
policy-map entry that decided it; ``cookie_names`` (the agent hands in its
cookie table's ``rules_of``) turns it into the policies' keys, interned like
label sets, and :func:`build_frame` puts them in Hubble's four columns by the
event's direction and whether a deny rule decided (drop reason POLICY_DENY).

DNS: the proxy's rows carry the query (interned like URLs), its types and
the answer's addresses (interned like label sets); every row gets the DNS
names the context knows for its two addresses (``src_names`` / ``dst_names``),
one ``searchsorted`` per side and batch.

Lost events are never silent: the datapath's own counter (ring buffer full)
and the reader's count (e.g. a short read) add up in ``lost_events``, which is
in every frame's ``attrs`` and in the metrics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from workbench.datapath import abi
from workbench.observe import events as ev
from workbench.observe import schema
from workbench.observe.enrich import EnrichmentContext, _Tables, ip_to_int, lookup_sorted
from workbench.observe.metrics import FlowMetrics

DEFAULT_CAPACITY = 4095  # flows a lab keeps, as Hubble's ring: the one default for agent, CLI and Lab

# Ring columns: name -> dtype. Negative values mean "absent" where a column can be absent.
RING_COLUMNS: dict[str, str] = {
    "time_ns": "i8", "verdict": "i1", "drop_reason": "u2", "event_type": "i1", "direction": "i1",
    "is_reply": "i1", "ip_version": "u1", "src_ip": "u4", "dst_ip": "u4", "protocol": "i1",
    "src_port": "u2", "dst_port": "u2", "tcp_flags": "u1", "src_identity": "u4", "dst_identity": "u4",
    "src_labels": "i4", "dst_labels": "i4", "src_pod": "i4", "dst_pod": "i4", "src_ns": "i4",
    "dst_ns": "i4", "src_svc": "i4", "dst_svc": "i4", "match_type": "i1", "http_method": "i1",
    "http_url": "i4", "http_code": "i2", "l7_latency_ns": "i8", "bytes": "i8", "node": "i4",
    "summary": "i4", "policies": "i4",   # label-set code of the deciding entry's policies; -1 none
    # DNS: query (name code), rcode, qtypes / ips / answer record types (label-set codes), ttl;
    # the answer types only feed the metrics (Hubble's rrtypes), they are no column of the frame.
    "dns_query": "i4", "dns_rcode": "i2", "dns_qtypes": "i4", "dns_ips": "i4", "dns_ttl": "i8",
    "dns_rrtypes": "i4", "src_names": "i4", "dst_names": "i4",
}
DNS_RING_COLUMNS = ["dns_query", "dns_rcode", "dns_qtypes", "dns_ips", "dns_ttl", "dns_rrtypes"]
Batch = dict[str, np.ndarray]


def _table(names: dict[int, str], vocabulary: list[str], unknown: int = -1) -> np.ndarray:
    """A 256-entry lookup: raw u8 code -> index in ``vocabulary`` (``unknown`` for codes it lacks)."""
    out = np.full(256, unknown, dtype=np.int8)
    for code, name in names.items():
        if name in vocabulary:
            out[code] = vocabulary.index(name)
    return out


_EVENT_TYPE = _table(abi.FLOW_EVENT_TYPE_NAMES, schema.EVENT_TYPES)
_VERDICT = _table(abi.VERDICT_NAMES, schema.VERDICTS)
_DIRECTION = _table(abi.DIRECTION_NAMES, schema.DIRECTIONS)
_PROTOCOL = _table(abi.PROTOCOL_NAMES, schema.PROTOCOLS)
_MATCH = _table(abi.MATCH_TYPE_NAMES, schema.MATCH_TYPES)
_DROP_DESC = np.zeros(256, dtype=np.int16)  # 0 = DROP_REASON_UNKNOWN for codes Cilium lacks
for _code, _name in schema.DROP_REASONS.items():
    _DROP_DESC[_code] = schema.DROP_REASON_NAMES.index(_name)
_DROP_DESC[0] = -1
_TCP = schema.PROTOCOLS.index(abi.PROTOCOL_NAMES[abi.IPPROTO_TCP])
_POLICY_VERDICT = schema.EVENT_TYPES.index(abi.FLOW_EVENT_TYPE_NAMES[abi.EVENT_POLICY_VERDICT])
_INGRESS = schema.DIRECTIONS.index(abi.DIRECTION_NAMES[abi.DIR_INGRESS])
_EGRESS = schema.DIRECTIONS.index(abi.DIRECTION_NAMES[abi.DIR_EGRESS])


def without_dns(n: int) -> Batch:
    """The DNS ring columns of ``n`` rows that are no DNS exchange (every value absent)."""
    return {name: np.full(n, -1, RING_COLUMNS[name]) for name in DNS_RING_COLUMNS}


def no_cookie_names(cookie: int) -> tuple[str, ...]:
    """The default cookie resolver: without the agent's cookie table no policy is named."""
    return ()


class StringTable:
    """Append-only interning of hashable values to dense int codes."""

    def __init__(self) -> None:
        self._codes: dict[Hashable, int] = {}
        self.values: list[Any] = []

    def code(self, value: Hashable) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._codes[value] = len(self.values)
            self.values.append(value)
        return code


class FlowStore:
    """The last ``capacity`` flows of a lab, with enrichment, lost-event accounting and metrics.

    Example::

        >>> import numpy as np
        >>> from workbench.observe.events import EVENT_DTYPE
        >>> store = FlowStore(capacity=8)
        >>> store.ingest(np.zeros(3, EVENT_DTYPE))
        3
        >>> len(store.frame())
        3
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, context: EnrichmentContext | None = None,
                 *, clock: str = "monotonic", metrics: FlowMetrics | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = int(capacity)
        self.context = context or EnrichmentContext()
        self.metrics = metrics or FlowMetrics()
        self._ring = {name: np.zeros(self.capacity, dtype=dt) for name, dt in RING_COLUMNS.items()}
        self._lock = threading.Lock()
        self.seq = 0                  # flows ever appended; the ring holds seq-capacity..seq
        self.datapath_lost = 0
        self.reader_lost = 0
        self.datapath_counters: dict[str, float] = {}
        self.names = StringTable()    # pods, namespaces, services, urls, summaries, node names
        self.label_sets = StringTable()
        self._label_array: pa.Array | None = None
        self._ep_cache: tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._svc_cache: tuple[int, np.ndarray] | None = None
        self._ident_table: tuple[int, np.ndarray, np.ndarray] | None = None
        self._names_cache: tuple[int, np.ndarray] | None = None
        self._seen_pods: set[str] = set()
        #: policy cookie -> the policies' keys ("namespace/name"); the agent sets its cookie table's rules_of
        self.cookie_names: Callable[[int], tuple[str, ...]] = no_cookie_names
        self.set_clock(clock)
        self._listeners: list[Callable[[Batch], None]] = []

    # -- time ------------------------------------------------------------------------------
    def set_clock(self, clock: str = "monotonic") -> None:
        """Which kernel clock ``ktime_ns`` uses: "monotonic" (bpf_ktime_get_ns) or "boottime"."""
        clock_id = {"monotonic": time.CLOCK_MONOTONIC, "boottime": time.CLOCK_BOOTTIME}[clock]
        # Bracket the kernel clock read by two wall-clock reads so the offset's error is tiny.
        before = time.time_ns()
        kernel = time.clock_gettime_ns(clock_id)
        after = time.time_ns()
        self.clock_offset_ns = (before + after) // 2 - kernel

    # -- lost events -----------------------------------------------------------------------
    @property
    def lost_events(self) -> int:
        return self.datapath_lost + self.reader_lost

    def set_datapath_lost(self, total: int) -> None:
        """The datapath's cumulative lost-event counter (ring buffer full), as read from its map."""
        delta = int(total) - self.datapath_lost
        if delta > 0:
            self.datapath_lost = int(total)
            self.metrics.lost(delta, "datapath_ring_buffer")

    def record_lost(self, count: int, source: str = "reader") -> None:
        """Events the reader knows it lost (truncated record, reader behind)."""
        if count > 0:
            self.reader_lost += int(count)
            self.metrics.lost(int(count), source)

    def set_datapath_counters(self, counters: dict[str, float]) -> None:
        """Pass-through of the datapath's own counters into the metrics (as gauges)."""
        self.datapath_counters = dict(counters)
        self.metrics.datapath_counters(counters)

    # -- ingest ----------------------------------------------------------------------------
    def ingest_bytes(self, raw: bytes | bytearray | memoryview) -> int:
        """Decode concatenated ring-buffer records in bulk and ingest them."""
        whole = len(raw) - len(raw) % ev.EVENT_DTYPE.itemsize
        if whole != len(raw):
            self.record_lost(1, "reader")
        return self.ingest(ev.decode(memoryview(raw)[:whole]))

    def ingest(self, events: np.ndarray) -> int:
        """Enrich a structured array of flow events and append it; returns how many were added."""
        if len(events) == 0:
            return 0
        with self._lock:
            batch = self._enrich_raw(events)
            self._append(batch)
        return len(events)

    def add_l7(self, *, src_ip: str, dst_ip: str, src_port: int, dst_port: int, http_method: str,
               http_url: str, http_code: int | None = None, l7_latency_ns: int | None = None,
               verdict: str = "FORWARDED", traffic_direction: str = "INGRESS", is_reply: bool = False,
               src_identity: int = 0, dst_identity: int = 0, time_ns: int | None = None,
               bytes: int = 0, summary: str | None = None, drop_reason: int = 0,
               policies: tuple[str, ...] = ()) -> None:
        """One L7 (HTTP) flow from the proxy; enriched like datapath events.

        ``policies``: the policies whose HTTP rules allowed it (``*_allowed_by`` of
        ``traffic_direction``); a denied request names none and has ``drop_reason`` 133.

        Example::

            >>> store = FlowStore()
            >>> store.add_l7(src_ip="10.0.0.5", dst_ip="10.0.0.7", src_port=40000, dst_port=80,
            ...              http_method="PUT", http_url="http://deathstar/v1/exhaust-port",
            ...              http_code=403, verdict="DROPPED")
            >>> store.frame().event_type.tolist()
            ['l7']
        """
        if http_method not in schema.HTTP_METHODS:
            raise ValueError(f"unknown HTTP method {http_method!r}")
        now = time.time_ns() if time_ns is None else int(time_ns)
        base: Batch = {
            "time_ns": np.array([now], np.int64),
            "src_ip": np.array([ip_to_int(src_ip)], np.uint32),
            "dst_ip": np.array([ip_to_int(dst_ip)], np.uint32),
            "src_port": np.array([src_port], np.uint16),
            "dst_port": np.array([dst_port], np.uint16),
            "src_identity": np.array([src_identity], np.uint32),
            "dst_identity": np.array([dst_identity], np.uint32),
        }
        if summary is None:
            if http_code is None:
                summary = f"HTTP/1.1 {http_method} {http_url}"
            else:
                latency = "" if l7_latency_ns is None else f" {l7_latency_ns / 1e6:.0f}ms"
                summary = f"HTTP/1.1 {http_code}{latency} ({http_method} {http_url})"
        with self._lock:
            batch = self._enrich_common(base)
            batch.update({
                "verdict": np.array([schema.VERDICTS.index(verdict)], np.int8),
                "drop_reason": np.array([drop_reason], np.uint16),
                "event_type": np.array([schema.EVENT_TYPES.index("l7")], np.int8),
                "direction": np.array([schema.DIRECTIONS.index(traffic_direction)], np.int8),
                "is_reply": np.array([int(is_reply)], np.int8),
                "ip_version": np.array([4], np.uint8),
                "protocol": np.array([_TCP], np.int8),
                "tcp_flags": np.zeros(1, np.uint8),
                "match_type": np.array([-1], np.int8),
                "http_method": np.array([schema.HTTP_METHODS.index(http_method)], np.int8),
                "http_url": np.array([self.names.code(("url", http_url))], np.int32),
                "http_code": np.array([-1 if http_code is None else http_code], np.int16),
                "l7_latency_ns": np.array([-1 if l7_latency_ns is None else l7_latency_ns], np.int64),
                "bytes": np.array([bytes], np.int64),
                "summary": np.array([self.names.code(("summary", summary))], np.int32),
                "policies": np.array([self.policy_code(policies)], np.int32),
                **without_dns(1),
            })
            self._append(batch)

    def subscribe(self, listener: Callable[[Batch], None]) -> None:
        """Call ``listener(batch)`` (ring-code columns) after each append, e.g. a continuous archiver."""
        self._listeners.append(listener)

    # -- enrichment ------------------------------------------------------------------------
    def _enrich_raw(self, e: np.ndarray) -> Batch:
        n = len(e)
        base: Batch = {
            "time_ns": e["ktime_ns"].astype(np.int64) + self.clock_offset_ns,
            "src_ip": ev.network_u32(e["saddr"]),
            "dst_ip": ev.network_u32(e["daddr"]),
            "src_port": e["sport"].astype(np.uint16),
            "dst_port": e["dport"].astype(np.uint16),
            "src_identity": e["src_identity"].astype(np.uint32),
            "dst_identity": e["dst_identity"].astype(np.uint32),
        }
        batch = self._enrich_common(base)
        raw_type = e["event_type"]
        event_type = _EVENT_TYPE[raw_type]
        protocol = _PROTOCOL[e["proto"]]
        # Connection totals carry both directions; their summary says what they are.
        conn_summary = np.where(raw_type == abi.EVENT_CONN_END, self._summary_code("connection end totals"),
                                np.where(raw_type == abi.EVENT_CONN_STATS,
                                         self._summary_code("connection totals"), -1)).astype(np.int32)
        is_conn = conn_summary >= 0
        batch.update({
            "verdict": _VERDICT[e["verdict"]],
            "drop_reason": e["drop_reason"].astype(np.uint16),
            "event_type": event_type,
            "direction": _DIRECTION[e["direction"]],
            "is_reply": e["is_reply"].astype(np.int8),
            "ip_version": np.full(n, 4, np.uint8),
            "protocol": protocol,
            "tcp_flags": np.where(protocol == _TCP, e["tcp_flags"], 0).astype(np.uint8),
            "match_type": np.where(event_type == _POLICY_VERDICT, _MATCH[e["match_type"]], -1).astype(np.int8),
            "http_method": np.full(n, -1, np.int8),
            "http_url": np.full(n, -1, np.int32),
            "http_code": np.full(n, -1, np.int16),
            "l7_latency_ns": np.full(n, -1, np.int64),
            "bytes": (e["bytes"] + np.where(is_conn, e["reply_bytes"], 0)).astype(np.int64),
            "summary": conn_summary,  # -1: derived from protocol and flags when read
            "policies": self._policy_codes(e["policy_cookie"]),
            **without_dns(n),
        })
        return batch

    def policy_code(self, policies: tuple[str, ...]) -> int:
        """The ring code of a set of policy keys (-1: none). Caller holds the lock."""
        return self.label_sets.code(tuple(policies)) if policies else -1

    def _policy_codes(self, cookies: np.ndarray) -> np.ndarray:
        """Cookies -> ring codes of their policies, resolving each distinct cookie once."""
        if not cookies.any():
            return np.full(len(cookies), -1, np.int32)
        distinct, inverse = np.unique(cookies, return_inverse=True)
        codes = np.array([self.policy_code(self.cookie_names(int(c))) if c else -1 for c in distinct], np.int32)
        return codes[inverse.reshape(-1)]

    def _summary_code(self, text: str) -> int:
        return self.names.code(("summary", text))

    def _endpoint_codes(self, t: _Tables) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        if self._ep_cache is None or self._ep_cache[0] != t.version:
            pods = np.array([self.names.code(("pod", ep.pod)) for ep in t.ep_rows], np.int32)
            nss = np.array([self.names.code(("ns", ep.namespace)) for ep in t.ep_rows], np.int32)
            idents = np.array([ep.identity for ep in t.ep_rows], np.uint32)
            labels = np.array([self.label_sets.code(tuple(ep.labels)) for ep in t.ep_rows], np.int32)
            self._ep_cache = (t.version, pods, nss, idents, labels)
            self._seen_pods.update(f"{ep.namespace}/{ep.pod}" for ep in t.ep_rows)
        return self._ep_cache[1:]

    def _service_codes(self, t: _Tables) -> np.ndarray:
        if self._svc_cache is None or self._svc_cache[0] != t.version:
            self._svc_cache = (t.version, np.array([self.names.code(("svc", s)) for s in t.svc_names], np.int32))
        return self._svc_cache[1]

    def _labels_for(self, t: _Tables, identities: np.ndarray) -> np.ndarray:
        """Identity -> label-set code. Known identities by one searchsorted; others once each."""
        if self._ident_table is None or self._ident_table[0] != t.version:
            ids = np.array(sorted(t.identity_labels), dtype=np.uint32)
            codes = np.array([self.label_sets.code(tuple(t.identity_labels[int(i)])) for i in ids], np.int32)
            self._ident_table = (t.version, ids, codes)
        _, ids, codes = self._ident_table
        row = lookup_sorted(ids, identities)
        out = np.where(row >= 0, codes[np.maximum(row, 0)] if len(codes) else 0, -1).astype(np.int32)
        unknown = row < 0
        if unknown.any():   # identities the context does not know (yet): no labels
            out[unknown] = self.label_sets.code(())
        return out

    def _name_codes(self, t: _Tables) -> np.ndarray:
        """Label-set codes of the context's name sets, parallel to ``t.name_ips`` (once per context version)."""
        if self._names_cache is None or self._names_cache[0] != t.version:
            self._names_cache = (t.version, np.array([self.label_sets.code(n) for n in t.name_sets], np.int32))
        return self._names_cache[1]

    def _enrich_common(self, b: Batch) -> Batch:
        t = self.context.tables
        pods, nss, idents, _ = self._endpoint_codes(t)
        svc_codes = self._service_codes(t)
        name_codes = self._name_codes(t)
        out = dict(b)
        for side in ("src", "dst"):
            row = lookup_sorted(t.ep_ips, b[f"{side}_ip"])
            known = row >= 0
            safe = np.where(known, row, 0)
            if len(t.ep_rows):
                out[f"{side}_pod"] = np.where(known, pods[safe], -1).astype(np.int32)
                out[f"{side}_ns"] = np.where(known, nss[safe], -1).astype(np.int32)
                # The datapath leaves identity 0 when it did not resolve it: the ipcache view wins then.
                ident = b[f"{side}_identity"]
                out[f"{side}_identity"] = np.where((ident == 0) & known, idents[safe], ident).astype(np.uint32)
            else:
                out[f"{side}_pod"] = np.full(len(row), -1, np.int32)
                out[f"{side}_ns"] = np.full(len(row), -1, np.int32)
            key = (b[f"{side}_ip"].astype(np.uint64) << np.uint64(16)) | b[f"{side}_port"].astype(np.uint64)
            svc_row = lookup_sorted(t.svc_keys, key)
            out[f"{side}_svc"] = (np.where(svc_row >= 0, svc_codes[np.maximum(svc_row, 0)], -1).astype(np.int32)
                                  if len(svc_codes) else np.full(len(row), -1, np.int32))
            name_row = lookup_sorted(t.name_ips, b[f"{side}_ip"])
            out[f"{side}_names"] = (np.where(name_row >= 0, name_codes[np.maximum(name_row, 0)], -1).astype(np.int32)
                                    if len(name_codes) else np.full(len(row), -1, np.int32))
        n = len(b["src_ip"])
        labels = self._labels_for(t, np.concatenate([out["src_identity"], out["dst_identity"]]))
        out["src_labels"], out["dst_labels"] = labels[:n], labels[n:]
        out["node"] = np.full(n, self.names.code(("node", self.context.node_name)) if self.context.node_name
                              else -1, np.int32)
        return out

    # -- ring --------------------------------------------------------------------------------
    def _append(self, batch: Batch) -> None:
        whole = batch   # metrics and listeners (the archive) count every row, not only those the ring keeps
        n = len(batch["time_ns"])
        if n > self.capacity:  # only the newest capacity rows can survive anyway
            batch = {k: v[-self.capacity:] for k, v in batch.items()}
            skipped, n = n - self.capacity, self.capacity
        else:
            skipped = 0
        start = (self.seq + skipped) % self.capacity
        first = min(n, self.capacity - start)
        for name, column in self._ring.items():
            values = batch[name]
            column[start:start + first] = values[:first]
            if first < n:
                column[:n - first] = values[first:]
        self.seq += skipped + n
        self.metrics.observe(whole, self.label_sets.values)
        for listener in self._listeners:
            listener(whole)

    def __len__(self) -> int:
        return min(self.seq, self.capacity)

    def _read(self, last: int | None = None, after: int | None = None) -> Batch:
        """Copies of the newest rows, oldest first (two memcpy slices at most; caller holds the lock)."""
        count = len(self)
        if after is not None:
            count = min(count, max(self.seq - after, 0))
        if last is not None:
            count = min(count, max(int(last), 0))
        start = (self.seq - count) % self.capacity
        end = start + count
        if end <= self.capacity:
            return {name: column[start:end].copy() for name, column in self._ring.items()}
        wrap = end - self.capacity
        return {name: np.concatenate([column[start:], column[:wrap]]) for name, column in self._ring.items()}

    def frame(self, last: int | None = None, after: int | None = None) -> pd.DataFrame:
        """The stored flows, oldest first, as a flow DataFrame (docs/flows.md).

        ``last`` keeps the newest N rows, ``after`` the rows appended after
        sequence number ``after`` (``attrs["seq"]`` of an earlier frame: for --follow).
        """
        with self._lock:
            rows = self._read(last, after)
            names = list(self.names.values)
            label_array = self._labels_pa()
            seq = self.seq
        frame = build_frame(rows, names, label_array)
        frame.attrs["lost_events"] = self.lost_events
        frame.attrs["seq"] = seq
        return frame

    def _labels_pa(self) -> pa.Array:
        if self._label_array is None or len(self._label_array) != len(self.label_sets.values):
            self._label_array = pa.array([list(v) for v in self.label_sets.values], type=pa.list_(pa.string()))
        return self._label_array

    def known_pods(self) -> list[str]:
        """"namespace/pod" of the lab's endpoints and of every pod seen in stored flows."""
        return sorted(set(self.context.pods) | self._seen_pods)

    def flows(self, **filters: Any) -> pd.DataFrame:
        """``frame()`` filtered as `hubble observe` (see workbench.observe.filters.flows)."""
        from workbench.observe.filters import flows

        return flows(self, **filters)


# -- frame building (no per-row Python) ----------------------------------------------------------

def _categorical_from_keys(keys: np.ndarray, fmt: Callable[[int], str | None]) -> pd.Categorical:
    """Integer keys -> categorical with the sorted formatted values as categories.

    ``fmt`` is called once per distinct key; None means missing.
    """
    codes, uniques = pd.factorize(keys, sort=False)
    texts = [fmt(int(k)) for k in uniques]
    present = sorted({t for t in texts if t is not None})
    rank = {t: i for i, t in enumerate(present)}
    remap = np.array([rank[t] if t is not None else -1 for t in texts] + [-1], dtype=np.int64)
    return pd.Categorical.from_codes(remap[codes] if len(codes) else codes,
                                     categories=pd.Index(present, dtype="str"))


def _categorical_from_range(keys: np.ndarray, low: int, high: int,
                            fmt: Callable[[int], str | None]) -> pd.Categorical:
    """Like _categorical_from_keys for keys known to lie in [low, high]: one bincount, no hashing."""
    shifted = keys.astype(np.int64) - low
    present = np.flatnonzero(np.bincount(shifted, minlength=high - low + 1)).tolist()
    texts = [(fmt(k + low), k) for k in present]
    ordered = sorted((t, k) for t, k in texts if t is not None)
    remap = np.full(high - low + 1, -1, dtype=np.int32)
    for rank, (_, k) in enumerate(ordered):
        remap[k] = rank
    return pd.Categorical.from_codes(remap[shifted], categories=pd.Index([t for t, _ in ordered], dtype="str"))


def _small_categorical(codes: np.ndarray, table: list[str]) -> pd.Categorical:
    """Codes into a small interned table (-1 = missing) -> categorical (O(n) via one bincount)."""
    counts = np.bincount(codes.astype(np.int64) + 1, minlength=len(table) + 1)
    present = np.flatnonzero(counts[1:]).tolist()
    texts = sorted((table[c], c) for c in present)
    remap = np.full(len(table) + 1, -1, dtype=np.int32)   # remap[-1] stays -1: missing
    for rank, (_, c) in enumerate(texts):
        remap[c] = rank
    return pd.Categorical.from_codes(remap[codes], categories=pd.Index([t for t, _ in texts], dtype="str"))


def _labels_column(codes: np.ndarray, label_sets: pa.Array) -> Any:
    """Label-set codes (-1: an empty list) -> list<string> column, built from offsets and one dictionary decode.

    Cheaper than ``ListArray.take``: only the flat string values are copied.
    """
    if len(codes) == 0:
        return pd.array([], dtype=schema.LABELS_DTYPE)
    present = codes >= 0
    if not present.any():   # e.g. a policy column of flows no policy decided: empty lists, no decode
        empty = pa.ListArray.from_arrays(pa.array(np.zeros(len(codes) + 1, np.int32)), pa.array([], pa.string()))
        return pd.array(empty, dtype=schema.LABELS_DTYPE)
    set_offsets = label_sets.offsets.to_numpy().astype(np.int64)
    sizes = np.diff(set_offsets)
    codes = np.where(present, codes, 0).astype(np.int64)
    row_sizes = np.where(present, sizes[codes], 0)
    offsets = np.zeros(len(codes) + 1, np.int32)
    np.cumsum(row_sizes, out=offsets[1:])
    # For each flat element: its set's first value + its position inside the row.
    flat = np.repeat(set_offsets[:-1][codes] - offsets[:-1], row_sizes) + np.arange(offsets[-1], dtype=np.int64)
    values = pa.DictionaryArray.from_arrays(pa.array(flat.astype(np.int32)), label_sets.flatten()).cast(pa.string())
    return pd.array(pa.ListArray.from_arrays(pa.array(offsets), values), dtype=schema.LABELS_DTYPE)


def _int_to_ip(value: int) -> str:
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def _fixed(codes: np.ndarray, column: str) -> pd.Categorical:
    return pd.Categorical.from_codes(codes.astype(np.int64), dtype=schema.FLOW_DTYPES[column])


def _policy_columns(rows: Batch, label_array: pa.Array) -> dict[str, Any]:
    """Hubble's four attribution columns: the deciding entry's policies, in the one column its
    direction and kind (a deny rule decided: drop reason POLICY_DENY, also as AUDIT) select."""
    codes, direction = rows["policies"], rows["direction"]
    denied = rows["drop_reason"] == abi.DROP_POLICY_DENY
    out = {}
    for column, side, deny in (("ingress_allowed_by", _INGRESS, False), ("egress_allowed_by", _EGRESS, False),
                               ("ingress_denied_by", _INGRESS, True), ("egress_denied_by", _EGRESS, True)):
        out[column] = _labels_column(np.where((direction == side) & (denied == deny), codes, -1), label_array)
    return out


def build_frame(rows: Batch, names: list[Any], label_array: pa.Array) -> pd.DataFrame:
    """Ring-code columns -> a flow DataFrame. Used for the store and for archived batches."""
    table = [v[1] if isinstance(v, tuple) else str(v) for v in names] or [""]
    protocol = rows["protocol"].astype(np.int64)
    flags = rows["tcp_flags"].astype(np.int64)
    tcp = protocol == _TCP
    # Summary: interned text for L7 rows, else derived from protocol and flags (keys below -1).
    l4_key = -2 - (np.where(protocol >= 0, protocol, 255) * 256 + np.where(tcp, flags, 0))
    summary_keys = np.where(rows["summary"] >= 0, rows["summary"], l4_key)

    def summary_text(key: int) -> str | None:
        if key >= 0:
            return table[key]
        proto, fl = divmod(-2 - key, 256)
        if proto == 255:
            return "unknown protocol"
        name = schema.PROTOCOLS[proto]
        return f"TCP Flags: {abi.tcp_flags_text(fl)}" if name == "TCP" else name

    def text_array(column: str) -> Any:
        """Name-table codes (-1: missing) -> the column's nullable strings, one dictionary decode."""
        codes = rows[column]
        arr = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32), mask=codes < 0),
                                             pa.array(table, pa.large_string())).dictionary_decode()
        return pd.array(arr, dtype=schema.FLOW_DTYPES[column])

    reply = rows["is_reply"]
    data: dict[str, Any] = {
        "time": pd.Series(rows["time_ns"].astype(np.int64).view("datetime64[ns]")).dt.tz_localize("UTC"),
        "verdict": _fixed(rows["verdict"], "verdict"),
        "drop_reason": rows["drop_reason"].astype(np.uint16),
        "drop_reason_desc": _fixed(_DROP_DESC[np.minimum(rows["drop_reason"], 255)], "drop_reason_desc"),
        "event_type": _fixed(rows["event_type"], "event_type"),
        "traffic_direction": _fixed(rows["direction"], "traffic_direction"),
        "is_reply": pd.arrays.BooleanArray(reply == 1, reply < 0),
        "ip_version": rows["ip_version"].astype(np.uint8),
        "src_ip": _categorical_from_keys(rows["src_ip"].astype(np.int64), _int_to_ip),
        "dst_ip": _categorical_from_keys(rows["dst_ip"].astype(np.int64), _int_to_ip),
        "protocol": _fixed(rows["protocol"], "protocol"),
        "src_port": rows["src_port"].astype(np.uint16),
        "dst_port": rows["dst_port"].astype(np.uint16),
        "tcp_flags": _categorical_from_range(np.where(tcp, flags, -1), -1, 255,
                                             lambda f: (abi.tcp_flags_text(f) or None) if f >= 0 else None),
        "src_identity": rows["src_identity"].astype(np.uint32),
        "dst_identity": rows["dst_identity"].astype(np.uint32),
        "src_labels": _labels_column(rows["src_labels"], label_array),
        "dst_labels": _labels_column(rows["dst_labels"], label_array),
        "src_pod": _small_categorical(rows["src_pod"], table),
        "dst_pod": _small_categorical(rows["dst_pod"], table),
        "src_namespace": _small_categorical(rows["src_ns"], table),
        "dst_namespace": _small_categorical(rows["dst_ns"], table),
        "src_service": _small_categorical(rows["src_svc"], table),
        "dst_service": _small_categorical(rows["dst_svc"], table),
        "policy_match_type": _fixed(rows["match_type"], "policy_match_type"),
        **_policy_columns(rows, label_array),
        "http_method": _fixed(rows["http_method"], "http_method"),
        "http_url": text_array("http_url"),
        "http_code": pd.arrays.IntegerArray(rows["http_code"].astype(np.int16), rows["http_code"] < 0),
        "l7_latency_ns": pd.arrays.IntegerArray(rows["l7_latency_ns"].astype(np.int64),
                                                rows["l7_latency_ns"] < 0),
        "dns_query": text_array("dns_query"),
        "dns_rcode": pd.arrays.IntegerArray(rows["dns_rcode"].astype(np.int16), rows["dns_rcode"] < 0),
        "dns_qtypes": _labels_column(rows["dns_qtypes"], label_array),
        "dns_ips": _labels_column(rows["dns_ips"], label_array),
        "dns_ttl": pd.arrays.IntegerArray(np.maximum(rows["dns_ttl"], 0).astype(np.uint32), rows["dns_ttl"] < 0),
        "src_names": _labels_column(rows["src_names"], label_array),
        "dst_names": _labels_column(rows["dst_names"], label_array),
        "bytes": rows["bytes"].astype(np.int64),
        "node_name": _small_categorical(rows["node"], table),
        "summary": _categorical_from_range(summary_keys, -2 - (255 * 256 + 255), max(len(table), 1),
                                           summary_text),
    }
    frame = pd.DataFrame(data)
    frame.attrs["lost_events"] = 0
    return frame

