"""Hubble's metrics, counted from the same batches that fill the flow store.

DNS rows (the DNS proxy's l7 rows) also feed Hubble's dns handler:
``hubble_dns_queries_total`` and ``hubble_dns_responses_total`` labelled
``rcode`` (Hubble's words for it; "" on a query, "Policy denied" on a refused
one), ``qtypes`` (joined with ",") and ``ips_returned`` (how many addresses the
answer has), and ``hubble_dns_response_types_total`` labelled ``type`` (one per
answer record: A, AAAA, CNAME) and ``qtypes``.

Each store has its own CollectorRegistry (never the process-global one), so
two stores in one process (tests, two labs) never share counters. Counting is
done per batch on the integer code columns: a handful of ``inc(n)`` calls per
batch, whatever its size.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from workbench.datapath import abi
from workbench.observe import schema

_HUBBLE_TYPE = {"trace": "Trace", "drop": "Drop", "policy-verdict": "PolicyVerdict", "l7": "L7"}
_DROP = schema.EVENT_TYPES.index(abi.EVENT_TYPE_NAMES[abi.EVENT_DROP])
_POLICY_VERDICT = schema.EVENT_TYPES.index(abi.EVENT_TYPE_NAMES[abi.EVENT_POLICY_VERDICT])
_VERDICT_UNKNOWN = abi.VERDICT_NAMES[abi.VERDICT_UNKNOWN]


def flow_type_labels(event_type: str | None, direction: str | None, dns: bool = False) -> tuple[str, str]:
    """Hubble's (type, subtype) for a flow: ("Trace", "to-endpoint"), ("L7", "HTTP"), ("L7", "DNS"), ("Drop", "")."""
    if event_type is None:
        return "Unknown", ""
    kind = _HUBBLE_TYPE[event_type]
    if event_type == "trace":
        return kind, abi.TRACE_POINT_BY_DIRECTION.get(direction or "", "")
    if event_type == "l7":
        return kind, "DNS" if dns else "HTTP"
    return kind, ""


# DNS rcode -> Hubble's words, as its dns metrics label them.
DNS_RCODE_NAMES = {
    0: "No Error", 1: "Format Error", 2: "Server Failure", 3: "Non-Existent Domain", 4: "Not Implemented",
    5: "Query Refused", 6: "Name Exists when it should not", 7: "RR Set Exists when it should not",
    8: "RR Set that should exist does not", 9: "Not Authorized", 10: "Name not contained in zone",
    11: "DSO-TYPE Not Implemented", 16: "Bad OPT Version", 17: "Key not recognized",
    18: "Signature out of time window", 19: "Bad TKEY Mode", 20: "Duplicate key name",
    21: "Algorithm not supported", 22: "Bad Truncation", 23: "Bad/missing Server Cookie",
}


def rcode_name(rcode: int) -> str:
    """The ``rcode`` label Hubble gives a DNS response ("Query Refused"); "" for an rcode it has no words for.

    Example::

        >>> rcode_name(3)
        'Non-Existent Domain'
    """
    return DNS_RCODE_NAMES.get(rcode, "")


def _name(vocabulary: list[str], code: int, missing: str) -> str:
    return vocabulary[code] if code >= 0 else missing


def _combos(*columns: np.ndarray, radix: tuple[int, ...]) -> list[tuple[tuple[int, ...], int]]:
    """Distinct rows of small int columns (values -1..radix-2) with their counts, via one bincount."""
    if len(columns[0]) == 0:
        return []
    key = np.zeros(len(columns[0]), np.int64)
    for column, size in zip(columns, radix, strict=True):
        key = key * size + (column.astype(np.int64) + 1)
    counts = np.bincount(key, minlength=int(np.prod(radix)))
    out = []
    for flat in np.flatnonzero(counts).tolist():
        n = int(counts[flat])
        values = []
        for size in reversed(radix):
            flat, digit = divmod(flat, size)
            values.append(digit - 1)
        out.append((tuple(reversed(values)), n))
    return out


_R_TYPE, _R_DIR, _R_VERDICT = len(schema.EVENT_TYPES) + 1, len(schema.DIRECTIONS) + 1, len(schema.VERDICTS) + 1
_R_PROTO, _R_MATCH, _R_REASON = len(schema.PROTOCOLS) + 1, len(schema.MATCH_TYPES) + 1, 257
_L7_DNS = len(schema.EVENT_TYPES)   # a pseudo event type: l7 rows of the DNS proxy (subtype DNS)
_DROPPED = schema.VERDICTS.index("DROPPED")


class FlowMetrics:
    """The Prometheus metrics of one flow store.

    Example::

        >>> m = FlowMetrics()
        >>> m.lost(3, "reader")
        >>> b'hubble_lost_events_total{source="reader"} 3.0' in m.exposition()
        True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.flows_processed = Counter("hubble_flows_processed", "Total number of flows processed",
                                       ["type", "subtype", "verdict"], registry=self.registry)
        self.drops = Counter("hubble_drop", "Number of drops", ["reason", "protocol"], registry=self.registry)
        self.policy_verdicts = Counter("hubble_policy_verdicts", "Number of policy verdicts",
                                       ["direction", "match", "action"], registry=self.registry)
        # Hubble's dns handler (without its optional context labels and query label).
        self.dns_queries = Counter("hubble_dns_queries", "Number of DNS queries observed",
                                   ["rcode", "qtypes", "ips_returned"], registry=self.registry)
        self.dns_responses = Counter("hubble_dns_responses", "Number of DNS responses observed",
                                     ["rcode", "qtypes", "ips_returned"], registry=self.registry)
        self.dns_response_types = Counter("hubble_dns_response_types", "Number of DNS answer records by type",
                                          ["type", "qtypes"], registry=self.registry)
        self.lost_events = Counter("hubble_lost_events", "Number of lost events", ["source"],
                                   registry=self.registry)
        self.datapath = Gauge("workbench_datapath_stat", "Counter values the lab datapath exports (name: which), passed through",
                              ["name"], registry=self.registry)
        # The continuous archive: rows it could not keep and failed writes (ring losses are hubble_lost_events).
        self.archive_dropped_rows = Counter("workbench_archive_dropped_rows",
                                            "Flow rows the archive dropped (reason: queue_full, write_error)",
                                            ["reason"], registry=self.registry)
        self.archive_errors = Counter("workbench_archive_errors", "Failed archive writes (e.g. disk full)",
                                      registry=self.registry)
        self.archive_failing_flag = Gauge("workbench_archive_failing",
                                          "1 while the last archive write failed, 0 once one succeeds",
                                          registry=self.registry)
        self._server: Any = None

    def observe(self, batch: dict[str, np.ndarray], lists: Sequence[tuple[str, ...]] = ()) -> None:
        """Count a batch of ring-code columns (see store.RING_COLUMNS).

        ``lists``: the store's interned lists (``label_sets.values``), which the
        DNS columns' codes index; needed only when the batch has DNS rows.
        """
        et, direction, verdict = batch["event_type"], batch["direction"], batch["verdict"]
        dns = batch["dns_query"] >= 0 if "dns_query" in batch else np.zeros(len(et), bool)
        kinds = np.where(dns, _L7_DNS, et) if dns.any() else et
        for (e, d, v), n in _combos(kinds, direction, verdict, radix=(_R_TYPE + 1, _R_DIR, _R_VERDICT)):
            event = None if e < 0 else "l7" if e == _L7_DNS else schema.EVENT_TYPES[e]
            kind, subtype = flow_type_labels(event, None if d < 0 else schema.DIRECTIONS[d], dns=e == _L7_DNS)
            self.flows_processed.labels(kind, subtype, _name(schema.VERDICTS, v, _VERDICT_UNKNOWN)).inc(n)
        if dns.any():
            self._observe_dns(batch, dns, lists)
        drops = et == _DROP
        if drops.any():
            # Codes above 255 are not Cilium's; they count under DROP_REASON_UNKNOWN like in the frame.
            reasons = np.minimum(batch["drop_reason"][drops].astype(np.int64), 255)
            for (reason, proto), n in _combos(reasons, batch["protocol"][drops], radix=(_R_REASON, _R_PROTO)):
                self.drops.labels(schema.drop_reason_name(reason),
                                  _name(schema.PROTOCOLS, proto, "UNKNOWN")).inc(n)
        verdicts = et == _POLICY_VERDICT
        if verdicts.any():
            for (d, mt, v), n in _combos(direction[verdicts], batch["match_type"][verdicts], verdict[verdicts],
                                         radix=(_R_DIR, _R_MATCH, _R_VERDICT)):
                self.policy_verdicts.labels(_name(schema.DIRECTIONS, d, "unknown").lower(),
                                            _name(schema.MATCH_TYPES, mt, "none").lower(),
                                            _name(schema.VERDICTS, v, "unknown").lower()).inc(n)

    def _observe_dns(self, batch: dict[str, np.ndarray], dns: np.ndarray, lists: Sequence[tuple[str, ...]]) -> None:
        """Hubble's dns handler over the batch's DNS rows, counted per distinct label combination."""
        def listed(code: int) -> tuple[str, ...]:
            return tuple(lists[code]) if 0 <= code < len(lists) else ()

        keys = np.stack([batch["verdict"][dns].astype(np.int64), batch["is_reply"][dns].astype(np.int64),
                         batch["dns_rcode"][dns].astype(np.int64), batch["dns_qtypes"][dns].astype(np.int64),
                         batch["dns_ips"][dns].astype(np.int64), batch["dns_rrtypes"][dns].astype(np.int64)], axis=1)
        combos, counts = np.unique(keys, axis=0, return_counts=True)
        for (verdict, reply, rcode, qtypes_code, ips_code, rrtypes_code), n in zip(combos.tolist(), counts.tolist(),
                                                                                   strict=True):
            qtypes = ",".join(listed(qtypes_code))
            ips_returned = str(len(listed(ips_code)))
            if verdict == _DROPPED:
                self.dns_queries.labels("Policy denied", qtypes, ips_returned).inc(n)
            elif reply != 1:
                self.dns_queries.labels("", qtypes, ips_returned).inc(n)
            else:
                self.dns_responses.labels(rcode_name(max(rcode, 0)), qtypes, ips_returned).inc(n)
                for answer_type in listed(rrtypes_code):
                    self.dns_response_types.labels(answer_type, qtypes).inc(n)

    def lost(self, count: int, source: str) -> None:
        self.lost_events.labels(source).inc(count)

    def archive_started(self) -> None:
        """Show the archive's series (at 0) from the moment an archive runs."""
        for reason in ("queue_full", "write_error"):
            self.archive_dropped_rows.labels(reason)
        self.archive_failing_flag.set(0)

    def archive_dropped(self, rows: int, reason: str) -> None:
        self.archive_dropped_rows.labels(reason).inc(rows)

    def archive_error(self) -> None:
        self.archive_errors.inc()

    def archive_failing(self, failing: bool) -> None:
        self.archive_failing_flag.set(1 if failing else 0)

    def datapath_counters(self, counters: dict[str, float]) -> None:
        for name, value in counters.items():
            self.datapath.labels(name).set(value)

    def exposition(self) -> bytes:
        """Prometheus text exposition format of this store's metrics."""
        return generate_latest(self.registry)

    def serve(self, port: int = 9965, addr: str = "127.0.0.1") -> int:
        """Serve /metrics over HTTP on ``addr:port`` in a daemon thread; returns the bound port.

        Port 0 picks a free port. Only loopback addresses are accepted: the lab
        exposes nothing to the network.
        """
        if addr not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("metrics are served on loopback only")
        if self._server is not None:
            return int(self._server.server_address[1])
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def stop(self) -> None:
        """Stop the HTTP server started by :meth:`serve` (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            threading.Thread(target=server.shutdown, daemon=True).start()
            server.server_close()


def metrics_frame(text: str | bytes) -> pd.DataFrame:
    """Parse a Prometheus text exposition into a DataFrame: name, labels (dict), value.

    Example::

        >>> metrics_frame('hubble_drop_total{reason="POLICY_DENIED",protocol="TCP"} 3.0\\n').value.tolist()
        [3.0]
    """
    if isinstance(text, bytes):
        text = text.decode()
    rows = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            rows.append({"name": sample.name, "labels": dict(sample.labels), "value": float(sample.value),
                         "type": family.type})
    return pd.DataFrame(rows, columns=["name", "labels", "value", "type"])


def metric_value(frame: pd.DataFrame, metric: str, /, **labels: str) -> float:
    """Sum of the samples called ``metric`` whose labels include ``labels`` (0.0 when none)."""
    rows = frame[frame["name"] == metric]
    total = 0.0
    for row_labels, value in zip(rows["labels"], rows["value"], strict=True):
        if all(row_labels.get(k) == v for k, v in labels.items()):
            total += value
    return total
