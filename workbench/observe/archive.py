"""Flows on disk as parquet: one-shot export/load and a continuous archiver.

A file written here loads back with the same columns, order and dtypes
(categoricals, UTC nanosecond times, label lists, nullable ints) and the same
``attrs["lost_events"]``. Other readers get the same rows and column names:
``pandas.read_parquet`` (label lists as arrays of strings), DuckDB and Polars.
A file that is not parquet, or parquet that is not a flow table, is a
ValidationError naming the file and what is wrong.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.errors import NotFoundError, ValidationError
from workbench.observe import schema

if TYPE_CHECKING:
    from workbench.observe.store import FlowStore


def export_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a flow frame to ``path`` (parquet); returns the path.

    Example::

        >>> from workbench.observe.schema import empty_flows
        >>> export_parquet(empty_flows(), "/tmp/flows.parquet")  # doctest: +SKIP
    """
    schema.validate_flows(frame)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(schema.flows_to_arrow(frame), path)
    return path


def load_parquet(path: str | Path) -> pd.DataFrame:
    """Read flows written by :func:`export_parquet` or the archiver (a file or a directory of files)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise NotFoundError(f"{path}: no .parquet files in this directory")
        frames = [load_parquet(f) for f in files]
        lost = sum(int(f.attrs.get("lost_events", 0)) for f in frames)
        merged = schema.coerce_flows(pd.concat([f.astype({c: "object" for c in schema.DYNAMIC_CATEGORICALS})
                                                for f in frames], ignore_index=True), document=str(path))
        merged.attrs["lost_events"] = lost
        return merged
    if not path.exists():
        raise NotFoundError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise ValidationError(f"{path}: not a readable parquet file ({err})") from err
    return schema.flows_from_arrow(table, document=str(path))


class ContinuousArchiver:
    """Append every flow the store ingests to parquet files in ``directory``.

    Rows are buffered and written as row groups every ``flush_rows`` rows or
    ``flush_seconds``; a new file starts every ``rotate_rows`` rows or
    ``rotate_seconds``. Files are named ``flows-<UTC time>-<n>.parquet`` and
    ``load_parquet(directory)`` reads them all back.

    Example::

        >>> archiver = ContinuousArchiver(store, "/var/lib/workbench/demo/flows")  # doctest: +SKIP
        >>> archiver.close()                                                        # doctest: +SKIP
    """

    def __init__(self, store: FlowStore, directory: str | Path, *, rotate_seconds: float = 3600.0,
                 rotate_rows: int = 1_000_000, flush_rows: int = 65536, flush_seconds: float = 1.0) -> None:
        self.store = store
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rotate_seconds, self.rotate_rows = rotate_seconds, rotate_rows
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.files: list[Path] = []
        self.rows_written = 0
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._file_rows = 0
        self._file_started = 0.0
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._closed = False
        store.subscribe(self._on_batch)

    def _on_batch(self, batch: dict[str, np.ndarray]) -> None:
        with self._lock:
            if self._closed:
                return
            self._pending.append({k: v.copy() for k, v in batch.items()})
            self._pending_rows += len(batch["time_ns"])
            if self._pending_rows >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
                self._flush_locked()

    def flush(self) -> None:
        """Write buffered rows now."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        from workbench.observe.store import build_frame

        self._last_flush = time.monotonic()
        if not self._pending:
            return
        rows = {k: np.concatenate([b[k] for b in self._pending]) for k in self._pending[0]}
        self._pending, self._pending_rows = [], 0
        frame = build_frame(rows, list(self.store.names.values), self.store._labels_pa())
        frame.attrs["lost_events"] = self.store.lost_events
        table = schema.flows_to_arrow(frame)
        if self._writer is not None and (self._file_rows >= self.rotate_rows
                                         or time.monotonic() - self._file_started >= self.rotate_seconds):
            self._close_file()
        if self._writer is None:
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
            path = self.directory / f"flows-{stamp}-{len(self.files):04d}.parquet"
            self._writer = pq.ParquetWriter(path, table.schema)
            self.files.append(path)
            self._file_rows, self._file_started = 0, time.monotonic()
        self._writer.write_table(table.replace_schema_metadata(self._writer.schema.metadata))
        self._file_rows += len(frame)
        self.rows_written += len(frame)

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> None:
        """Flush and close the current file (idempotent); the store keeps running."""
        with self._lock:
            if self._closed:
                return
            self._flush_locked()
            self._close_file()
            self._closed = True
