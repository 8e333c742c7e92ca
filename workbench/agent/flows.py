"""The flow service of the lab agent (Hubble's part of it).

It keeps the agent's flow store: as an endpoint observer it feeds the enrichment
context, a reader thread drains the datapath's ring buffer in bulk
(:class:`RingReader`) and polls its lost-event and packet counters, and the
local API gets these methods:

- ``flows.query(filters={}, after=None)`` -> ``{"seq", "lost_events"}`` + the flows as Arrow IPC bytes
- ``flows.export(path, filters={})`` -> ``{"path", "rows"}``
- ``flows.archive(directory, rotate_seconds=3600, rotate_rows=1000000)`` -> ``{"directory"}``
- ``flows.status()`` -> capacity, stored, seen, lost, metrics port, and the archive's
  rows, drops and error (:meth:`FlowService.archive_fields`)
- ``metrics.text()`` -> the Prometheus exposition
- ``metrics.serve(port=0)`` -> ``{"port"}`` (127.0.0.1 only)

Options (:class:`ObserveOptions`) come from ``lab up``: capacity, a metrics
port to serve /metrics from the start, an archive directory.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from workbench.datapath.loader import Datapath
from workbench.datapath.ringreader import RingReader
from workbench.errors import ValidationError
from workbench.lab.identity import IdentityAllocator
from workbench.lab.model import Endpoint, Identity, Service
from workbench.observe.archive import ContinuousArchiver, export_parquet
from workbench.observe.enrich import EnrichmentContext
from workbench.observe.filters import flows
from workbench.observe.ipc import to_ipc
from workbench.observe.store import DEFAULT_CAPACITY, FlowStore
from workbench.wire import BinaryReply

COUNTER_INTERVAL = 1.0
CLOCK_INTERVAL = 60.0  # re-measure ktime -> wall clock (NTP may step the wall clock)


@dataclass(frozen=True)
class ObserveOptions:
    """The lab's flow options from ``lab up`` (config.json key "observe")."""

    capacity: int = DEFAULT_CAPACITY
    metrics_port: int | None = None
    archive_dir: str | None = None

    @classmethod
    def from_config(cls, value: Any) -> ObserveOptions:
        if not isinstance(value, dict):
            return cls()
        port = value.get("metrics_port")
        return cls(capacity=int(value.get("capacity", DEFAULT_CAPACITY)),
                   metrics_port=None if port is None else int(port),
                   archive_dir=str(value["archive_dir"]) if value.get("archive_dir") else None)


def existing_parent(path: str, what: str) -> Path:
    """``path`` when it is absolute and its directory exists: the agent creates no directories for a client."""
    target = Path(path)
    if not target.is_absolute():
        raise ValidationError(f"{what} {path!r} must be absolute (the agent has its own working directory)")
    if not target.parent.is_dir():
        raise ValidationError(f"{what} {path!r}: directory {target.parent} does not exist")
    return target


class LabInventory(Protocol):
    """What the flow service reads to enrich flows (the agent's LabContext fits)."""

    endpoints: dict[str, Endpoint]
    services: list[Service]
    identities: IdentityAllocator


class FlowService:
    """Flow store + ring reader + API methods of one agent.

    ``datapath`` None: no ring to read (flows are ingested directly, as unit tests do).
    """

    def __init__(self, node_name: str, inventory: LabInventory, options: ObserveOptions,
                 datapath: Datapath | None = None) -> None:
        self.inventory = inventory
        self.datapath = datapath
        self.context = EnrichmentContext(node_name=node_name)
        self.store = FlowStore(options.capacity, self.context)
        if datapath is not None:   # policy cookies in events -> the policies' names (flows' *_allowed_by/*_denied_by)
            self.store.cookie_names = datapath.cookies.rules_of
        self.reader: RingReader | None = None
        self.archiver: ContinuousArchiver | None = None
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signature: tuple[int, int, int] = (-1, -1, -1)
        self._extra_identities: list[Identity] = []
        if options.metrics_port is not None:
            self.metrics_port = self.store.metrics.serve(options.metrics_port)
        if options.archive_dir:
            self.archive(options.archive_dir)

    # -- endpoint observer -----------------------------------------------------------------------
    def attach_endpoint(self, ep: Endpoint) -> None:
        self.sync_context(force=True)
        if self._thread is None:
            self.start()

    def detach_endpoint(self, ep: Endpoint) -> None:
        self.sync_context(force=True)

    def set_names(self, names: dict[str, tuple[str, ...]]) -> None:
        """The DNS names learnt per address (flows' src_names/dst_names from now on), replacing the old set."""
        self.context.update(names=names)

    def add_names(self, names: dict[str, tuple[str, ...]]) -> None:
        """Names one DNS answer taught; the enrichment tables are rebuilt only when one is new."""
        self.context.add_names(names)

    def set_extra_identities(self, identities: list[Identity]) -> None:
        """Identities other services own (toFQDNs per-address identities), for the flows' labels."""
        self._extra_identities = list(identities)
        self.sync_context(force=True)

    def sync_context(self, force: bool = False) -> None:
        """Copy the lab's endpoints, identities and services into the enrichment context if they changed."""
        endpoints = list(self.inventory.endpoints.values())
        services = list(self.inventory.services)
        identities = list(self.inventory.identities.all()) + self._extra_identities
        signature = (len(endpoints), len(services), len(identities))
        if force or signature != self._signature:
            self._signature = signature
            self.context.update(endpoints=endpoints, identities=identities, services=services)

    # -- reading the datapath ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the reader thread (idempotent); without a datapath it only keeps the context fresh."""
        if self._thread is not None:
            return
        if self.datapath is not None:
            self.reader = RingReader(self.datapath.bpf[b"events"].map_fd)
        self._thread = threading.Thread(target=self._run, name="flow-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_counters = 0.0
        next_clock = time.monotonic() + CLOCK_INTERVAL
        while not self._stop.is_set():
            try:
                if self.reader is not None:
                    self.reader.wait(0.2)
                    batch = self.reader.drain()
                    if len(batch):
                        self.store.ingest(batch)
                else:
                    self._stop.wait(0.5)
                now = time.monotonic()
                if now >= next_counters:
                    next_counters = now + COUNTER_INTERVAL
                    self.sync_context()
                    self._poll_counters()
                if now >= next_clock:
                    next_clock = now + CLOCK_INTERVAL
                    self.store.set_clock()
            except Exception:  # the agent must keep serving; the log keeps the trace
                traceback.print_exc()
                self._stop.wait(1.0)

    def _poll_counters(self) -> None:
        if self.datapath is None:
            return
        self.store.set_datapath_lost(int(self.datapath.lost_events()))
        counters: dict[str, float] = {}
        for row in self.datapath.metrics().itertuples(index=False):
            base = f"{str(row.verdict).lower()}_{str(row.direction).lower()}_{int(row.drop_reason)}"
            counters[f"{base}_packets"] = counters.get(f"{base}_packets", 0.0) + float(row.packets)
            counters[f"{base}_bytes"] = counters.get(f"{base}_bytes", 0.0) + float(row.bytes)
        self.store.set_datapath_counters(counters)

    # -- API methods --------------------------------------------------------------------------------
    def query(self, filters: dict[str, Any] | None = None, after: int | None = None) -> BinaryReply:
        """The stored flows after ``after`` (a seq), filtered; binary: dtypes cross the socket untouched."""
        frame = self.store.frame(after=after)
        frame.attrs["known_pods"] = self.store.known_pods()
        if self.datapath is not None:   # a policy filter naming a policy the lab never had is an error
            frame.attrs["known_policies"] = sorted(self.datapath.cookies.names())
        result = flows(frame, **(filters or {}))
        meta: dict[str, Any] = {"seq": int(frame.attrs["seq"]), "lost_events": self.store.lost_events}
        if self.archiver is not None:   # the dashboard shows a failing archive next to the flows
            meta["archive"] = {"dropped": self.archiver.rows_dropped, "error": self.archiver.error}
        result.attrs = dict(meta)
        return BinaryReply(meta, to_ipc(result))

    def export(self, path: str, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        existing_parent(path, "export path")
        frame = flows(self.store, **(filters or {}))
        frame.attrs = {"lost_events": self.store.lost_events}
        export_parquet(frame, path)
        return {"path": path, "rows": len(frame)}

    def archive(self, directory: str, rotate_seconds: float = 3600.0, rotate_rows: int = 1_000_000) -> dict[str, Any]:
        existing_parent(directory, "archive directory")
        if self.archiver is not None:
            self.archiver.close()
        self.archiver = ContinuousArchiver(self.store, directory, rotate_seconds=rotate_seconds,
                                           rotate_rows=rotate_rows)
        return {"directory": str(self.archiver.directory)}

    def status(self) -> dict[str, Any]:
        return {"capacity": self.store.capacity, "stored": len(self.store), "seen": self.store.seq,
                "lost_events": self.store.lost_events, "metrics_port": self.metrics_port,
                "reading": self.reader is not None, **self.archive_fields(),
                "archive_detail": self.archiver.stats() if self.archiver else None}

    def archive_fields(self) -> dict[str, Any]:
        """The archive in a few flat fields (``lab status`` prints them one a line).

        ``archive_dropped`` counts rows the archive lost (its queue full, a failed write),
        apart from ``lost_events`` (the ring); ``archive_error`` is the failure in force.

        Example::

            >>> service.archive_fields()   # doctest: +SKIP
            {'archive': '/srv/flows', 'archive_rows': 1200, 'archive_dropped': 0, 'archive_error': None}
        """
        if self.archiver is None:
            return {"archive": None}
        return {"archive": str(self.archiver.directory), "archive_rows": self.archiver.rows_written,
                "archive_dropped": self.archiver.rows_dropped, "archive_error": self.archiver.error}

    def serve_metrics(self, port: int = 0) -> dict[str, Any]:
        if not 0 <= port <= 65535:
            raise ValidationError(f"metrics.serve: port {port} is not in 0-65535 (0: any free port)")
        self.metrics_port = self.store.metrics.serve(int(port))
        return {"port": self.metrics_port}

    def metrics_text(self) -> str:
        return self.store.metrics.exposition().decode()

    def status_fields(self) -> dict[str, Any]:
        """What this service adds to `lab status`."""
        return {"flow_capacity": self.store.capacity,
                "metrics": f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None,
                **self.archive_fields()}

    def methods(self) -> dict[str, Callable[..., Any]]:
        """The local API methods of this service."""
        return {"flows.query": self.query, "flows.export": self.export, "flows.archive": self.archive,
                "flows.status": self.status, "metrics.text": self.metrics_text, "metrics.serve": self.serve_metrics}

    def close(self) -> None:
        """Stop reading, flush the archive, stop the metrics server (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.archiver is not None:
            self.archiver.close()
        self.store.metrics.stop()
