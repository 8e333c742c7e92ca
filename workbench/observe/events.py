"""The raw flow event as it leaves the ring buffer, and its bulk decoder.

The datapath declares ``struct flow_event`` once in bpf/lib/types.h and
mirrors it in workbench/datapath/layout.py; ``EVENT_DTYPE`` below is that mirror.

Codes inside the record: event types are WB_EVENT_*, verdicts follow Hubble's
enum, drop reasons are Cilium's drop codes, directions follow WB_DIR_*.
"""

from __future__ import annotations

import numpy as np

from workbench.datapath.abi import FLOW_EVENT_DTYPE

# flow_event.event_type (WB_EVENT_* of bpf/lib/types.h).
EVENT_TRACE = 1          # first packet of a connection, per direction, forwarded
EVENT_DROP = 2           # every dropped packet
EVENT_POLICY_VERDICT = 3 # first packet of a connection: the policy decision
EVENT_CONN_STATS = 4     # periodic totals of a live connection (shown as trace rows)
EVENT_CONN_END = 5       # totals when a TCP connection ends (shown as trace rows)
# Hubble's Verdict enum numbers (0 = unknown).
VERDICT_CODES = {1: "FORWARDED", 2: "DROPPED", 3: "ERROR", 4: "AUDIT", 5: "REDIRECTED"}
# WB_DIR_* of bpf/lib/types.h.
DIR_INGRESS = 0
DIR_EGRESS = 1
# Cilium's policy match types (WB_MATCH_*).
MATCH_CODES = {0: "none", 1: "L3-Only", 2: "L3-L4", 3: "L4-Only", 4: "all"}


# struct flow_event, declared once in bpf/lib/types.h and mirrored (with a layout test) by the datapath.
EVENT_DTYPE: np.dtype = np.dtype(FLOW_EVENT_DTYPE)


def network_u32(field: np.ndarray) -> np.ndarray:
    """A u32 field holding network-order bytes -> host integers (10.0.0.5 -> 0x0a000005)."""
    if field.dtype.byteorder == ">":
        return field.astype(np.uint32)
    return np.ascontiguousarray(field).view(">u4").astype(np.uint32)




def decode(raw: bytes | bytearray | memoryview, dtype: np.dtype | None = None) -> np.ndarray:
    """Concatenated ring-buffer records -> one structured array, no per-event Python.

    A trailing partial record is a reader bug, not data: it raises ValueError.

    Example::

        >>> rec = np.zeros(2, EVENT_DTYPE)
        >>> decode(rec.tobytes()).shape
        (2,)
    """
    dtype = EVENT_DTYPE if dtype is None else dtype
    if len(raw) % dtype.itemsize:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {dtype.itemsize}-byte flow events")
    return np.frombuffer(raw, dtype=dtype)
