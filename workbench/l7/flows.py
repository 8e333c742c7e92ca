"""Proxy exchanges -> L7 flow rows in the agent's flow store (Hubble's http-request / http-response).

An allowed request gives two rows, as Hubble shows them: the request
(client -> server, no code) and the response (server -> client, is_reply,
code and latency). A denied request gives one DROPPED row with code 403; a
malformed one an ERROR row with code 400 and no method.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..observe import schema
from ..observe.enrich import ip_to_int
from .proxy import Exchange


def record_exchange(store: Any, ex: Exchange) -> None:
    """Append the rows of one exchange to ``store`` (a :class:`workbench.observe.store.FlowStore`)."""
    d = ex.decision
    src_id, dst_id = (d.src_identity, d.dst_identity) if d else (0, 0)
    direction = d.direction if d else "INGRESS"
    now = time.time_ns()
    client_ip, client_port = ex.client
    server_ip, server_port = ex.server
    if ex.verdict == "FORWARDED":
        store.add_l7(src_ip=client_ip, dst_ip=server_ip, src_port=client_port, dst_port=server_port,
                     http_method=ex.method, http_url=ex.url, verdict="FORWARDED", traffic_direction=direction,
                     src_identity=src_id, dst_identity=dst_id, time_ns=now - (ex.latency_ns or 0),
                     bytes=ex.request_bytes)
        store.add_l7(src_ip=server_ip, dst_ip=client_ip, src_port=server_port, dst_port=client_port,
                     http_method=ex.method, http_url=ex.url, http_code=ex.code, l7_latency_ns=ex.latency_ns,
                     verdict="FORWARDED", traffic_direction=direction, is_reply=True,
                     src_identity=dst_id, dst_identity=src_id, time_ns=now, bytes=ex.response_bytes)
        return
    if ex.method in schema.HTTP_METHODS:
        store.add_l7(src_ip=client_ip, dst_ip=server_ip, src_port=client_port, dst_port=server_port,
                     http_method=ex.method, http_url=ex.url, http_code=ex.code, verdict=ex.verdict,
                     traffic_direction=direction, src_identity=src_id, dst_identity=dst_id, time_ns=now,
                     summary=f"HTTP/1.1 {ex.code} ({ex.method} {ex.url})")
        return
    _add_without_method(store, ex, now)


def _add_without_method(store: Any, ex: Exchange, now: int) -> None:
    """An L7 row whose request had no valid method (FlowStore.add_l7 takes known methods only)."""
    base = {
        "time_ns": np.array([now], np.int64),
        "src_ip": np.array([ip_to_int(ex.client[0])], np.uint32),
        "dst_ip": np.array([ip_to_int(ex.server[0])], np.uint32),
        "src_port": np.array([ex.client[1]], np.uint16),
        "dst_port": np.array([ex.server[1]], np.uint16),
        "src_identity": np.array([0], np.uint32),
        "dst_identity": np.array([0], np.uint32),
    }
    summary = f"HTTP {ex.code} malformed request"
    with store._lock:
        batch = store._enrich_common(base)
        batch.update({
            "verdict": np.array([schema.VERDICTS.index(ex.verdict)], np.int8),
            "drop_reason": np.zeros(1, np.uint16),
            "event_type": np.array([schema.EVENT_TYPES.index("l7")], np.int8),
            "direction": np.array([schema.DIRECTIONS.index("INGRESS")], np.int8),
            "is_reply": np.zeros(1, np.int8),
            "ip_version": np.array([4], np.uint8),
            "protocol": np.array([schema.PROTOCOLS.index("TCP")], np.int8),
            "tcp_flags": np.zeros(1, np.uint8),
            "match_type": np.array([-1], np.int8),
            "http_method": np.array([-1], np.int8),
            "http_url": np.array([store.names.code(("url", ex.url))], np.int32),
            "http_code": np.array([-1 if ex.code is None else ex.code], np.int16),
            "l7_latency_ns": np.array([-1], np.int64),
            "bytes": np.zeros(1, np.int64),
            "summary": np.array([store.names.code(("summary", summary))], np.int32),
        })
        store._append(batch)
