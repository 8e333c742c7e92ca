"""Ring-buffer flow events (struct flow_event) -> a DataFrame in Hubble's vocabulary.

The observe layer adds labels, pods, services and summaries; this module only
decodes what the datapath knows, with the flow column names (docs/flows.md) where they exist.

Example::

    >>> import numpy as np
    >>> from workbench.datapath import abi as layout
    >>> rec = np.zeros(1, layout.FLOW_EVENT_DTYPE)
    >>> rec["verdict"], rec["drop_reason"], rec["event_type"], rec["proto"] = 2, 133, 2, 6
    >>> events_frame(rec)[["verdict", "drop_reason_desc", "event_type", "protocol"]].iloc[0].tolist()
    ['DROPPED', 'POLICY_DENIED', 'drop', 'TCP']
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from workbench.datapath import abi as layout

EVENT_COLUMNS = ["time", "verdict", "drop_reason", "drop_reason_desc", "event_type", "traffic_direction",
                 "is_reply", "ip_version", "src_ip", "dst_ip", "protocol", "src_port", "dst_port", "tcp_flags",
                 "src_identity", "dst_identity", "policy_match_type", "proxy_port", "packets", "bytes",
                 "reply_packets", "reply_bytes", "ep_id", "ifindex"]


def _ips(be: np.ndarray) -> list[str]:
    # u32 read natively from network-order bytes: byte 0 is the first octet
    b = be.astype("<u4").view(np.uint8).reshape(-1, 4)
    return [f"{r[0]}.{r[1]}.{r[2]}.{r[3]}" for r in b]


def _categorical(codes: np.ndarray, names: dict[int, str]) -> pd.Categorical:
    values = [names.get(int(c), str(int(c))) for c in codes]
    return pd.Categorical(values, categories=sorted(set(names.values()) | set(values)))


def events_frame(records: np.ndarray, boot_offset_ns: int | None = None) -> pd.DataFrame:
    """Decode FLOW_EVENT_DTYPE records; ``time`` is UTC (ktime is CLOCK_MONOTONIC plus the offset)."""
    if boot_offset_ns is None:
        boot_offset_ns = time.time_ns() - time.monotonic_ns()
    r = np.asarray(records, dtype=layout.FLOW_EVENT_DTYPE)
    frame = pd.DataFrame({
        "time": pd.to_datetime(r["ktime_ns"].astype(np.int64) + boot_offset_ns, unit="ns", utc=True),
        "verdict": _categorical(r["verdict"], layout.VERDICT_NAMES),
        "drop_reason": r["drop_reason"].astype(np.int64),
        "drop_reason_desc": _categorical(r["drop_reason"], layout.DROP_REASON_NAMES),
        "event_type": _categorical(r["event_type"], layout.EVENT_TYPE_NAMES),
        "traffic_direction": _categorical(r["direction"], layout.DIRECTION_NAMES),
        "is_reply": r["is_reply"].astype(bool),
        "ip_version": np.full(len(r), 4, dtype=np.int64),
        "src_ip": _ips(r["saddr"]),
        "dst_ip": _ips(r["daddr"]),
        "protocol": _categorical(r["proto"], layout.PROTOCOL_NAMES),
        "src_port": r["sport"].astype(np.int64),
        "dst_port": r["dport"].astype(np.int64),
        "tcp_flags": [layout.tcp_flags_text(int(f)) for f in r["tcp_flags"]],
        "src_identity": r["src_identity"].astype(np.int64),
        "dst_identity": r["dst_identity"].astype(np.int64),
        "policy_match_type": _categorical(r["match_type"], layout.MATCH_TYPE_NAMES),
        "proxy_port": r["proxy_port"].astype(np.int64),
        "packets": r["packets"].astype(np.int64),
        "bytes": r["bytes"].astype(np.int64),
        "reply_packets": r["reply_packets"].astype(np.int64),
        "reply_bytes": r["reply_bytes"].astype(np.int64),
        "ep_id": r["ep_id"].astype(np.int64),
        "ifindex": r["ifindex"].astype(np.int64),
    }, columns=EVENT_COLUMNS)
    return frame
