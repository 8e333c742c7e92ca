"""Proxy exchanges -> L7 flow rows in the agent's flow store (Hubble's http-request / http-response).

An allowed request gives two rows, as Hubble shows them: the request
(client -> server, no code) and the response (server -> client, is_reply,
code and latency); both name the policies whose HTTP rules allowed it in
``*_allowed_by`` of the decision's direction. A denied request gives one
DROPPED row with code 403 and drop reason 133 (POLICY_DENIED: no rule allows
it), naming no policy; a malformed one an ERROR row with code 400 and no method.

Rows are appended in batches by :class:`FlowRecorder`'s thread, off the
request path: one enrichment per batch instead of one per row (a single
``FlowStore.add_l7`` call costs ~170 us, as much as the proxy's own work).
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.agent.l7.proxy import Exchange
from workbench.datapath import abi
from workbench.observe import schema
from workbench.observe.enrich import ip_to_int


@dataclass
class _Row:
    time_ns: int
    src: tuple[str, int]
    dst: tuple[str, int]
    src_identity: int
    dst_identity: int
    verdict: str
    direction: str
    is_reply: bool
    method: str
    url: str
    code: int | None
    latency_ns: int | None
    bytes: int
    summary: str
    drop_reason: int = 0
    policies: tuple[str, ...] = ()


def exchange_rows(ex: Exchange, now: int | None = None) -> list[_Row]:
    """The flow rows of one exchange (see the module docstring)."""
    now = time.time_ns() if now is None else now
    d = ex.decision
    src_id, dst_id = (d.src_identity, d.dst_identity) if d else (0, 0)
    direction = d.direction if d else "INGRESS"
    method = ex.method if ex.method in schema.HTTP_METHODS else ""
    if ex.verdict == "FORWARDED":
        latency = "" if ex.latency_ns is None else f" {ex.latency_ns / 1e6:.0f}ms"
        policies = d.policies if d else ()
        return [
            _Row(now - (ex.latency_ns or 0), ex.client, ex.server, src_id, dst_id, "FORWARDED", direction, False,
                 method, ex.url, None, None, ex.request_bytes, f"HTTP/1.1 {method} {ex.url}", policies=policies),
            _Row(now, ex.server, ex.client, dst_id, src_id, "FORWARDED", direction, True, method, ex.url,
                 ex.code, ex.latency_ns, ex.response_bytes, f"HTTP/1.1 {ex.code}{latency} ({method} {ex.url})",
                 policies=policies),
        ]
    summary = f"HTTP/1.1 {ex.code} ({method} {ex.url})" if method else f"HTTP {ex.code} malformed request"
    # a denied request: no HTTP rule allows it, Cilium's POLICY_DENIED (no policy to name)
    reason = abi.DROP_POLICY_DENIED if ex.verdict == "DROPPED" else 0
    return [_Row(now, ex.client, ex.server, src_id, dst_id, ex.verdict, direction, False, method, ex.url,
                 ex.code, None, 0, summary, drop_reason=reason)]


def append_rows(store: Any, rows: list[_Row]) -> None:
    """Append rows to a :class:`workbench.observe.store.FlowStore` as one enriched batch."""
    if not rows:
        return
    n = len(rows)
    base = {
        "time_ns": np.array([r.time_ns for r in rows], np.int64),
        "src_ip": np.array([ip_to_int(r.src[0]) for r in rows], np.uint32),
        "dst_ip": np.array([ip_to_int(r.dst[0]) for r in rows], np.uint32),
        "src_port": np.array([r.src[1] for r in rows], np.uint16),
        "dst_port": np.array([r.dst[1] for r in rows], np.uint16),
        "src_identity": np.array([r.src_identity for r in rows], np.uint32),
        "dst_identity": np.array([r.dst_identity for r in rows], np.uint32),
    }
    with store._lock:
        batch = store._enrich_common(base)
        batch.update({
            "verdict": np.array([schema.VERDICTS.index(r.verdict) for r in rows], np.int8),
            "drop_reason": np.array([r.drop_reason for r in rows], np.uint16),
            "event_type": np.full(n, schema.EVENT_TYPES.index("l7"), np.int8),
            "direction": np.array([schema.DIRECTIONS.index(r.direction) for r in rows], np.int8),
            "is_reply": np.array([int(r.is_reply) for r in rows], np.int8),
            "ip_version": np.full(n, 4, np.uint8),
            "protocol": np.full(n, schema.PROTOCOLS.index("TCP"), np.int8),
            "tcp_flags": np.zeros(n, np.uint8),
            "match_type": np.full(n, -1, np.int8),
            "http_method": np.array([schema.HTTP_METHODS.index(r.method) if r.method else -1 for r in rows],
                                    np.int8),
            "http_url": np.array([store.names.code(("url", r.url)) for r in rows], np.int32),
            "http_code": np.array([-1 if r.code is None else r.code for r in rows], np.int16),
            "l7_latency_ns": np.array([-1 if r.latency_ns is None else r.latency_ns for r in rows], np.int64),
            "bytes": np.array([r.bytes for r in rows], np.int64),
            "summary": np.array([store.names.code(("summary", r.summary)) for r in rows], np.int32),
            "policies": np.array([store.policy_code(r.policies) for r in rows], np.int32),
        })
        store._append(batch)


def record_exchange(store: Any, ex: Exchange) -> None:
    """Append the rows of one exchange now (tests; the proxy goes through :class:`FlowRecorder`)."""
    append_rows(store, exchange_rows(ex))


class FlowRecorder:
    """A thread that appends queued exchanges to a store in batches (at most ``interval`` late)."""

    def __init__(self, store: Any, interval: float = 0.02) -> None:
        self.store = store
        self.interval = interval
        self._queue: queue.SimpleQueue[Exchange | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="l7-flows", daemon=True)
        self._thread.start()

    def put(self, ex: Exchange) -> None:
        self._queue.put(ex)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            time.sleep(self.interval)  # let a burst gather into one batch
            batch, stop = [first], False
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                rows = [row for ex in batch for row in exchange_rows(ex)]
                append_rows(self.store, rows)
            except Exception:
                traceback.print_exc()
            if stop:
                return

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2)
