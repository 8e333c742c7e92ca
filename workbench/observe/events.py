"""The raw flow event as it leaves the ring buffer, and its bulk decoder.

The datapath declares ``struct flow_event`` once in bpf/lib/types.h;
:data:`EVENT_DTYPE` is its mirror in :mod:`workbench.datapath.abi`, where the
codes inside the record (event types, verdicts, drop reasons, directions, ...)
also get their names. The flow store turns decoded records into flows.

Example::

    >>> rec = np.zeros(2, EVENT_DTYPE)
    >>> decode(rec.tobytes()).shape
    (2,)
"""

from __future__ import annotations

import numpy as np

from workbench.datapath.abi import FLOW_EVENT_DTYPE as EVENT_DTYPE

__all__ = ["EVENT_DTYPE", "decode", "network_u32"]


def network_u32(field: np.ndarray) -> np.ndarray:
    """A u32 field holding network-order bytes -> host integers (10.0.0.5 -> 0x0a000005)."""
    if field.dtype.byteorder == ">":
        return field.astype(np.uint32)
    return np.ascontiguousarray(field).view(">u4").astype(np.uint32)


def decode(raw: bytes | bytearray | memoryview, dtype: np.dtype | None = None) -> np.ndarray:
    """Concatenated ring-buffer records -> one structured array, no per-event Python.

    A trailing partial record is a reader bug, not data: it raises ValueError.
    """
    dtype = EVENT_DTYPE if dtype is None else dtype
    if len(raw) % dtype.itemsize:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {dtype.itemsize}-byte flow events")
    return np.frombuffer(raw, dtype=dtype)
