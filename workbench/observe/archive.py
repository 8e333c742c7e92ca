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
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.errors import NotFoundError, ValidationError
from workbench.observe import schema

if TYPE_CHECKING:
    from workbench.observe.store import FlowStore

Batch = dict[str, np.ndarray]
DEFAULT_QUEUE_ROWS = 262_144   # rows waiting for the archive writer (~25 MB) before it drops and counts


def archive_error_text(err: BaseException, path: str | Path) -> str:
    """One line for a failed archive write: what went wrong and where.

    Example::

        >>> archive_error_text(OSError(28, "Error writing bytes"), "/a/x.parquet")
        'archive: No space left on device writing /a/x.parquet'
    """
    code = getattr(err, "errno", None)
    if isinstance(code, int) and code > 0:
        reason = os.strerror(code)
    else:
        reason = (str(err).splitlines() or [""])[0] or type(err).__name__
    return f"archive: {reason} writing {path}"


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
    """Append every flow the store ingests to parquet files in ``directory``, from its own thread.

    The store hands each ingested batch to :meth:`_on_batch`, which only queues
    it: ingest never waits for the disk. The queue holds at most ``queue_rows``
    rows; a batch that does not fit is dropped and counted (``dropped["queue_full"]``).
    A writer thread turns queued rows into row groups every ``flush_rows`` rows or
    ``flush_seconds``; a new file starts every ``rotate_rows`` rows or
    ``rotate_seconds``. Files are named ``flows-<UTC time>-<n>.parquet`` and
    ``load_parquet(directory)`` reads them all back.

    A failed write (a full disk, a removed directory) is counted, never raised:
    its rows go to ``dropped["write_error"]``, the message to ``error`` (one
    line, e.g. ``archive: No space left on device writing /x/flows-...parquet``),
    and the metrics of the store say so. The file being written is closed and
    kept if it still reads back, else removed (its rows are counted as dropped:
    a parquet file without its footer is unreadable). For ``retry_seconds`` after
    a failure rows are dropped without trying; then the next write opens a new
    file, so the archive resumes by itself once there is room again.

    Example::

        >>> archiver = ContinuousArchiver(store, "/var/lib/workbench/demo/flows")  # doctest: +SKIP
        >>> archiver.stats()["error"]                                               # doctest: +SKIP
        >>> archiver.close()                                                        # doctest: +SKIP
    """

    def __init__(self, store: FlowStore, directory: str | Path, *, rotate_seconds: float = 3600.0,
                 rotate_rows: int = 1_000_000, flush_rows: int = 65536, flush_seconds: float = 1.0,
                 queue_rows: int = DEFAULT_QUEUE_ROWS, retry_seconds: float = 2.0) -> None:
        if queue_rows < 1:
            raise ValueError("queue_rows must be at least 1")
        self.store = store
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rotate_seconds, self.rotate_rows = rotate_seconds, rotate_rows
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.queue_rows, self.retry_seconds = queue_rows, retry_seconds
        self.files: list[Path] = []
        self.rows_written = 0
        self.dropped = {"queue_full": 0, "write_error": 0}
        self.errors = 0                      # failed writes
        self.error: str | None = None        # the last failure while it lasts; None once a write succeeds
        self.last_error: str | None = None   # the last failure ever
        # Shared with the ingest thread (under _cond): the queue and its size.
        self._cond = threading.Condition()
        self._queue: deque[Batch] = deque()
        self._queued_rows = 0
        self._closing = False
        self._flush_asked = 0
        self._flush_done = 0
        # Only the writer thread touches these.
        self._pending: list[Batch] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._file_rows = 0
        self._file_started = 0.0
        self._file_number = 0   # never reused: a name is never written twice, even after a removed file
        self._last_flush = time.monotonic()
        self._retry_at = 0.0
        self._labels: pa.Array | None = None
        self._metrics = store.metrics
        self._metrics.archive_started()
        self._thread = threading.Thread(target=self._run, name="flow-archiver", daemon=True)
        self._thread.start()
        store.subscribe(self._on_batch)

    # -- the ingest side: O(1), never touches the disk ------------------------------------------
    def _on_batch(self, batch: Batch) -> None:
        """Queue a batch (called by the store under its lock; the store never changes a batch it handed out)."""
        rows = len(batch["time_ns"])
        with self._cond:
            if self._closing:
                return
            if self._queued_rows + rows > self.queue_rows:
                self._drop(rows, "queue_full")
                return
            self._queue.append(batch)
            self._queued_rows += rows
            self._cond.notify()

    def _drop(self, rows: int, reason: str) -> None:
        if rows > 0:
            self.dropped[reason] += rows
            self._metrics.archive_dropped(rows, reason)

    @property
    def rows_dropped(self) -> int:
        """Rows the archive did not keep: its queue was full, or writing failed."""
        return sum(self.dropped.values())

    def stats(self) -> dict[str, Any]:
        """What the archive did so far (for ``flows.status`` and ``lab status``).

        Example::

            >>> archiver.stats()["dropped"]   # doctest: +SKIP
            {'queue_full': 0, 'write_error': 0}
        """
        with self._cond:
            queued = self._queued_rows
        return {"directory": str(self.directory), "files": len(self.files), "rows_written": self.rows_written,
                "rows_dropped": self.rows_dropped, "dropped": dict(self.dropped), "queued_rows": queued,
                "errors": self.errors, "error": self.error, "last_error": self.last_error}

    # -- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing and self._flush_asked == self._flush_done:
                    wait = self.flush_seconds - (time.monotonic() - self._last_flush) if self._pending else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                batches = list(self._queue)
                self._queue.clear()
                self._queued_rows = 0
                closing, asked = self._closing, self._flush_asked
            try:
                for batch in batches:
                    self._pending.append(batch)
                    self._pending_rows += len(batch["time_ns"])
                    if self._pending_rows >= self.flush_rows:
                        self._write_pending()
                if closing or asked != self._flush_done or \
                        time.monotonic() - self._last_flush >= self.flush_seconds:
                    self._write_pending()
                if closing:
                    self._finish_file()
            except Exception as err:  # the writer must outlive any surprise; the rows it held are counted
                self._failed(err, self._pending_rows)
                self._pending, self._pending_rows = [], 0
            with self._cond:
                self._flush_done = asked
                self._cond.notify_all()
            if closing:
                return

    def _write_pending(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        batches, rows = self._pending, self._pending_rows
        self._pending, self._pending_rows = [], 0
        if time.monotonic() < self._retry_at:
            self._drop(rows, "write_error")
            return
        try:
            self._write(batches)
        except Exception as err:  # OSError mostly (ENOSPC, EIO, a removed directory)
            self._failed(err, rows)
            return
        if self.error is not None:
            self.error = None
            self._metrics.archive_failing(False)

    def _write(self, batches: list[Batch]) -> None:
        from workbench.observe.store import build_frame

        rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        # The store's interning tables only grow, so copies taken now cover every code in these rows.
        names = list(self.store.names.values)
        frame = build_frame(rows, names, self._label_array())
        frame.attrs["lost_events"] = self.store.lost_events
        table = schema.flows_to_arrow(frame)
        if self._writer is not None and (self._file_rows >= self.rotate_rows
                                         or time.monotonic() - self._file_started >= self.rotate_seconds):
            self._finish_file()
        if self._writer is None:
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
            self._path = self.directory / f"flows-{stamp}-{self._file_number:04d}.parquet"
            self._file_number += 1
            self._file_rows, self._file_started = 0, time.monotonic()
            self._writer = pq.ParquetWriter(self._path, table.schema)
            self.files.append(self._path)
        self._writer.write_table(table.replace_schema_metadata(self._writer.schema.metadata))
        self._file_rows += len(frame)
        self.rows_written += len(frame)

    def _label_array(self) -> pa.Array:
        """The store's label sets as Arrow, built here: the store's own cache belongs to its lock."""
        values = list(self.store.label_sets.values)
        if self._labels is None or len(self._labels) != len(values):
            self._labels = pa.array([list(v) for v in values], type=pa.list_(pa.string()))
        return self._labels

    def _finish_file(self, after_failure: bool = False) -> None:
        """Close the current file; if it does not read back whole, remove it and count its rows.

        ``after_failure``: a write just failed and was reported; do not report the file again.
        """
        writer, path, rows = self._writer, self._path, self._file_rows
        self._writer, self._path, self._file_rows = None, None, 0
        if path is None:
            return
        if writer is None:   # the file was created but its writer failed to start: nothing in it
            path.unlink(missing_ok=True)
            return
        problem: BaseException | None = None
        try:
            writer.close()
            # pyarrow may report no error when the footer did not fit: read it back to be sure.
            if pq.read_metadata(path).num_rows != rows:
                problem = OSError(f"{path} holds fewer rows than written")
        except Exception as err:
            problem = err
        if problem is None:
            return
        path.unlink(missing_ok=True)
        if path in self.files:
            self.files.remove(path)
        self.rows_written -= rows
        self._drop(rows, "write_error")
        if not after_failure:
            self._record_error(problem, path)

    def _failed(self, err: BaseException, rows: int) -> None:
        path = self._path
        self._drop(rows, "write_error")
        self._record_error(err, path)
        self._finish_file(after_failure=True)   # keeps what is readable of the file, so the next write starts a new one
        self._retry_at = time.monotonic() + self.retry_seconds

    def _record_error(self, err: BaseException, path: Path | None) -> None:
        message = archive_error_text(err, path or self.directory)
        self.errors += 1
        self.error = self.last_error = message
        self._metrics.archive_error()
        self._metrics.archive_failing(True)

    # -- control -----------------------------------------------------------------------------------
    def flush(self, timeout: float = 30.0) -> None:
        """Write every row queued before this call (waits for the writer thread up to ``timeout`` s)."""
        with self._cond:
            if self._closing:
                return
            self._flush_asked += 1
            ticket = self._flush_asked
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._flush_done >= ticket, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued and close the current file (idempotent); the store keeps running."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
