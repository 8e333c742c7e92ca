"""Flows as an Arrow IPC stream: how a flow frame crosses the agent's socket.

The bytes are one Arrow IPC stream (schema, then record batches) of
:func:`~workbench.observe.schema.flows_to_arrow`'s table, so every dtype
survives untouched: categoricals with their categories, UTC nanosecond times,
nullable ints and bools, label lists. No per-row work on either side.

Example::

    >>> from workbench.observe.schema import empty_flows
    >>> frame = from_ipc(to_ipc(empty_flows()))
    >>> frame.shape
    (0, 43)
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from workbench.errors import ValidationError
from workbench.observe import schema


def to_ipc(frame: pd.DataFrame) -> bytes:
    """A flow frame as Arrow IPC stream bytes (``frame.attrs`` included)."""
    table = schema.flows_to_arrow(frame)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(payload: bytes, *, document: str = "flows") -> pd.DataFrame:
    """Arrow IPC stream bytes from :func:`to_ipc` as a flow frame with the exact dtypes.

    Bytes that are not an Arrow stream of flows are a ValidationError naming ``document``.
    """
    try:
        table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise ValidationError(f"{document}: not an Arrow IPC stream of flows ({err})") from err
    return schema.flows_from_arrow(table, document=document)
