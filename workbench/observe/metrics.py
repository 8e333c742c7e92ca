"""Hubble's metrics, counted from the same batches that fill the flow store.

Each store has its own CollectorRegistry (never the process-global one), so
two stores in one process (tests, two labs) never share counters. Counting is
done per batch on the integer code columns: a handful of ``inc(n)`` calls per
batch, whatever its size.
"""

from __future__ import annotations

import threading
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


def flow_type_labels(event_type: str | None, direction: str | None) -> tuple[str, str]:
    """Hubble's (type, subtype) for a flow: ("Trace", "to-endpoint"), ("L7", "HTTP"), ("Drop", "")."""
    if event_type is None:
        return "Unknown", ""
    kind = _HUBBLE_TYPE[event_type]
    if event_type == "trace":
        return kind, abi.TRACE_POINT_BY_DIRECTION.get(direction or "", "")
    if event_type == "l7":
        return kind, "HTTP"
    return kind, ""


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
        self.lost_events = Counter("hubble_lost_events", "Number of lost events", ["source"],
                                   registry=self.registry)
        self.datapath = Gauge("workbench_datapath_counter", "Counters exported by the lab datapath, passed through",
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

    def observe(self, batch: dict[str, np.ndarray]) -> None:
        """Count a batch of ring-code columns (see store.RING_COLUMNS)."""
        et, direction, verdict = batch["event_type"], batch["direction"], batch["verdict"]
        for (e, d, v), n in _combos(et, direction, verdict, radix=(_R_TYPE, _R_DIR, _R_VERDICT)):
            kind, subtype = flow_type_labels(None if e < 0 else schema.EVENT_TYPES[e],
                                             None if d < 0 else schema.DIRECTIONS[d])
            self.flows_processed.labels(kind, subtype, _name(schema.VERDICTS, v, _VERDICT_UNKNOWN)).inc(n)
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
