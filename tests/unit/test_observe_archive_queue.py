"""The continuous archive writes from its own thread through a bounded queue: ingest never waits for
the disk, rows the archive cannot keep are counted apart from ring losses, and a failed write is a
one-line error that clears once writing works again."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np

from workbench.observe import synthetic
from workbench.observe.archive import ContinuousArchiver, archive_error_text, load_parquet
from workbench.observe.metrics import metric_value, metrics_frame
from workbench.observe.store import FlowStore


class HeldArchiver(ContinuousArchiver):
    """An archiver whose disk writes wait until the test lets them go (a slow disk)."""

    def __init__(self, *args, **kwargs) -> None:
        self.release = threading.Event()
        self.writing = threading.Event()
        super().__init__(*args, **kwargs)

    def _write(self, batches):
        self.writing.set()
        self.release.wait(30)
        super()._write(batches)


def metric(store: FlowStore, name: str, **labels: str) -> float:
    return metric_value(metrics_frame(store.metrics.exposition()), name, **labels)


def test_ingest_does_not_wait_for_a_stuck_writer_and_counts_what_the_queue_drops(tmp_path: Path):
    store = FlowStore(capacity=100_000, context=synthetic.star_wars_context())
    archiver = HeldArchiver(store, tmp_path, flush_rows=100, flush_seconds=60, queue_rows=250)
    batches = [synthetic.random_events(100, seed=i) for i in range(20)]
    store.ingest(batches[0])
    assert archiver.writing.wait(5), "the writer thread never started writing"

    ingest = threading.Thread(target=lambda: [store.ingest(b) for b in batches[1:]])
    ingest.start()
    ingest.join(5)
    assert not ingest.is_alive(), "ingest waited for the archive writer"
    assert store.seq == 2000 and store.lost_events == 0          # the ring lost nothing
    # The writer holds one flush (100 rows); the queue at most 250 more; the rest is dropped and counted.
    assert archiver.dropped["queue_full"] >= 2000 - 100 - 250
    assert archiver.dropped["write_error"] == 0
    assert metric(store, "workbench_archive_dropped_rows_total", reason="queue_full") == archiver.dropped["queue_full"]

    archiver.release.set()
    archiver.close()
    assert archiver.rows_written + archiver.rows_dropped == 2000
    back = load_parquet(tmp_path)
    assert len(back) == archiver.rows_written
    # What was kept is the first batch and whole batches after it, in order.
    assert back.src_port.to_numpy()[:100].tolist() == batches[0]["sport"].tolist()


def test_flush_and_close_write_everything_queued(tmp_path: Path):
    store = FlowStore(capacity=50, context=synthetic.star_wars_context())
    archiver = ContinuousArchiver(store, tmp_path, flush_rows=10**6, flush_seconds=3600)
    events = synthetic.random_events(300, seed=3)
    store.ingest(events)          # bigger than the ring: the archive still gets every row
    archiver.flush()
    assert archiver.rows_written == 300
    store.ingest(synthetic.random_events(20, seed=4))
    archiver.close()
    archiver.close()
    assert archiver.rows_written == 320 and archiver.rows_dropped == 0 and archiver.error is None
    back = load_parquet(tmp_path)
    assert back.src_port.to_numpy()[:300].tolist() == events["sport"].tolist()
    store.ingest(synthetic.random_events(5))   # after close the store goes on; the archive takes nothing
    assert store.seq == 325 and archiver.rows_written == 320


def test_a_failed_write_is_counted_reported_and_recovers(tmp_path: Path):
    directory = tmp_path / "flows"
    store = FlowStore(context=synthetic.star_wars_context())
    archiver = ContinuousArchiver(store, directory, flush_rows=1, flush_seconds=3600, retry_seconds=0.3)
    shutil.rmtree(directory)      # the disk goes away under the archive

    assert store.ingest(synthetic.random_events(10, seed=1)) == 10
    archiver.flush()
    assert archiver.error is not None
    assert archiver.error.startswith(f"archive: No such file or directory writing {directory}/flows-")
    assert archiver.error.endswith(".parquet") and "\n" not in archiver.error
    assert archiver.dropped == {"queue_full": 0, "write_error": 10} and archiver.errors == 1
    assert store.lost_events == 0                         # archive drops are not ring losses
    assert metric(store, "workbench_archive_dropped_rows_total", reason="write_error") == 10
    assert metric(store, "workbench_archive_errors_total") == 1
    assert metric(store, "workbench_archive_failing") == 1

    directory.mkdir()             # room again; rows within retry_seconds are dropped without trying
    store.ingest(synthetic.random_events(4, seed=2))
    archiver.flush()
    assert archiver.dropped["write_error"] == 14 and archiver.errors == 1
    time.sleep(0.35)
    kept = synthetic.random_events(6, seed=3)
    store.ingest(kept)
    archiver.flush()
    assert archiver.error is None and archiver.last_error is not None
    assert metric(store, "workbench_archive_failing") == 0
    archiver.close()
    back = load_parquet(directory)
    assert back.src_port.to_numpy().tolist() == kept["sport"].tolist()
    assert archiver.stats()["rows_dropped"] == 14 and archiver.stats()["rows_written"] == 6


def test_error_text_names_the_reason_and_the_file():
    assert archive_error_text(OSError(28, "Error writing bytes to file. Detail: [errno 28]"),
                              "/a/x.parquet") == "archive: No space left on device writing /a/x.parquet"
    assert archive_error_text(ValueError("bad\nsecond line"), Path("/a")) == "archive: bad writing /a"
    assert archive_error_text(RuntimeError(), "/a") == "archive: RuntimeError writing /a"


def test_queue_holds_batches_without_copying_ring_rows(tmp_path: Path):
    """Later ingests overwrite the ring; rows already queued for the archive keep their values."""
    store = FlowStore(capacity=10, context=synthetic.star_wars_context())
    archiver = HeldArchiver(store, tmp_path, flush_rows=10**6, flush_seconds=3600)
    first = synthetic.random_events(10, seed=5)
    store.ingest(first)
    for seed in range(6, 12):
        store.ingest(synthetic.random_events(10, seed=seed))
    archiver.release.set()
    archiver.close()
    back = load_parquet(tmp_path)
    assert len(back) == 70
    assert np.array_equal(back.src_port.to_numpy()[:10], first["sport"])


def test_the_dashboard_shows_a_failing_archive_even_when_paused(tmp_path: Path):
    """What the agent's flows.query adds (the archive's drops and error) becomes a visible line."""
    import pytest

    pytest.importorskip("anywidget")
    from workbench.observe.dashboard import observe_dashboard

    directory = tmp_path / "flows"
    store = FlowStore(context=synthetic.star_wars_context())
    archiver = ContinuousArchiver(store, directory, flush_rows=1, retry_seconds=3600)

    def fetch(after):   # as the agent answers flows.query when the lab archives
        frame = store.frame(after=after)
        frame.attrs["archive"] = {"dropped": archiver.rows_dropped, "error": archiver.error}
        return frame

    dash = observe_dashboard(fetch)
    assert dash.archive_status.value == ""          # the archive keeps every row: no line
    shutil.rmtree(directory)                        # before its first file: the next write fails
    store.ingest(synthetic.random_events(7, seed=2))
    archiver.flush()
    dash.pause_button.value = True                   # a paused dashboard still says so
    dash.refresh()
    assert "No such file or directory" in dash.archive_status.value
    assert "7 rows dropped" in dash.archive_status.value
    archiver.close()
