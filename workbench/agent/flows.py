"""The observe layer inside the lab agent (an AGENT_PLUGINS module: ``setup(agent)``).

It keeps the agent's flow store: an endpoint observer feeds the enrichment
context, a reader thread drains the datapath's ring buffer in bulk
(:class:`RingReader`) and polls its lost-event and packet counters, and the
local API gets these methods:

- ``flows.query(filters={}, after=None)`` -> ``{"jsonl", "seq", "lost_events"}``
- ``flows.export(path, filters={})`` -> ``{"path", "rows"}``
- ``flows.archive(directory, rotate_seconds=3600, rotate_rows=1000000)`` -> ``{"directory"}``
- ``flows.status()`` -> capacity, stored, seen, lost, metrics port
- ``metrics.text()`` -> the Prometheus exposition
- ``metrics.serve(port=0)`` -> ``{"port"}`` (127.0.0.1 only)

Options come from the lab's config.json key "observe": ``capacity`` (default
4095), ``metrics_port`` (serve /metrics from the start), ``archive_dir``.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from workbench.datapath.ringreader import RingReader
from workbench.errors import ValidationError
from workbench.lab.model import Endpoint
from workbench.observe.archive import ContinuousArchiver, export_parquet
from workbench.observe.enrich import EnrichmentContext
from workbench.observe.filters import flows
from workbench.observe.render import to_json_lines
from workbench.observe.store import DEFAULT_CAPACITY, FlowStore

COUNTER_INTERVAL = 1.0
CLOCK_INTERVAL = 60.0  # re-measure ktime -> wall clock (NTP may step the wall clock)


class FlowService:
    """Flow store + ring reader + API methods of one agent."""

    def __init__(self, agent: Any, options: dict[str, Any] | None = None) -> None:
        options = options or {}
        self.agent = agent
        self.context = EnrichmentContext(node_name=f"wb-{agent.lab}-node")
        self.store = FlowStore(int(options.get("capacity", DEFAULT_CAPACITY)), self.context)
        self.reader: RingReader | None = None
        self.datapath: Any = None
        self.archiver: ContinuousArchiver | None = None
        self.metrics_port: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signature: tuple[int, int, int] = (-1, -1, -1)
        if options.get("metrics_port") is not None:
            self.metrics_port = self.store.metrics.serve(int(options["metrics_port"]))
        if options.get("archive_dir"):
            self.archive(str(options["archive_dir"]))

    # -- endpoint observer -----------------------------------------------------------------------
    def attach_endpoint(self, ep: Endpoint) -> None:
        self.sync_context(force=True)
        if self._thread is None:
            self.start()

    def detach_endpoint(self, ep: Endpoint) -> None:
        self.sync_context(force=True)

    def sync_context(self, force: bool = False) -> None:
        """Copy the agent's endpoints, identities and services into the enrichment context if they changed."""
        endpoints = list(getattr(self.agent, "endpoints", {}).values())
        services = list(getattr(self.agent, "services", []))
        allocator = getattr(self.agent, "identities", None)
        identities = list(allocator.all()) if allocator is not None else []
        signature = (len(endpoints), len(services), len(identities))
        if force or signature != self._signature:
            self._signature = signature
            self.context.update(endpoints=endpoints, identities=identities, services=services)

    # -- reading the datapath ---------------------------------------------------------------------
    def find_datapath(self) -> Any:
        """The agent's Datapath: ``agent.datapath`` or an endpoint observer with an ``events`` ring."""
        candidates = [getattr(self.agent, "datapath", None), *getattr(self.agent, "observers", [])]
        for obj in candidates:
            bpf = getattr(obj, "bpf", None)
            if bpf is not None and callable(getattr(obj, "lost_events", None)):
                try:
                    bpf[b"events"]
                except KeyError:
                    continue
                return obj
        return None

    def start(self) -> None:
        """Start the reader thread (idempotent); without a datapath it only keeps the context fresh."""
        if self._thread is not None:
            return
        self.datapath = self.find_datapath()
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
        metrics = getattr(self.datapath, "metrics", None)
        if callable(metrics):
            frame = metrics()
            counters: dict[str, float] = {}
            for row in frame.itertuples(index=False):
                base = f"{str(row.verdict).lower()}_{str(row.direction).lower()}_{int(row.drop_reason)}"
                counters[f"{base}_packets"] = counters.get(f"{base}_packets", 0.0) + float(row.packets)
                counters[f"{base}_bytes"] = counters.get(f"{base}_bytes", 0.0) + float(row.bytes)
            self.store.set_datapath_counters(counters)

    # -- API methods --------------------------------------------------------------------------------
    def query(self, filters: dict[str, Any] | None = None, after: int | None = None) -> dict[str, Any]:
        frame = self.store.frame(after=after)
        frame.attrs["known_pods"] = self.store.known_pods()
        result = flows(frame, **(filters or {}))
        result.attrs.pop("known_pods", None)
        return {"jsonl": to_json_lines(result), "seq": int(frame.attrs["seq"]),
                "lost_events": self.store.lost_events}

    def export(self, path: str, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        if not Path(path).is_absolute():
            raise ValidationError(f"export path {path!r} must be absolute (the agent has its own working directory)")
        frame = flows(self.store, **(filters or {}))
        frame.attrs = {"lost_events": self.store.lost_events}
        export_parquet(frame, path)
        return {"path": path, "rows": len(frame)}

    def archive(self, directory: str, rotate_seconds: float = 3600.0, rotate_rows: int = 1_000_000) -> dict[str, Any]:
        if self.archiver is not None:
            self.archiver.close()
        self.archiver = ContinuousArchiver(self.store, directory, rotate_seconds=rotate_seconds,
                                           rotate_rows=rotate_rows)
        return {"directory": str(self.archiver.directory)}

    def status(self) -> dict[str, Any]:
        return {"capacity": self.store.capacity, "stored": len(self.store), "seen": self.store.seq,
                "lost_events": self.store.lost_events, "metrics_port": self.metrics_port,
                "reading": self.reader is not None,
                "archive": str(self.archiver.directory) if self.archiver else None}

    def serve_metrics(self, port: int = 0) -> dict[str, Any]:
        self.metrics_port = self.store.metrics.serve(int(port))
        return {"port": self.metrics_port}

    def register(self, agent: Any) -> None:
        agent.register_method("flows.query", self.query)
        agent.register_method("flows.export", self.export)
        agent.register_method("flows.archive", self.archive)
        agent.register_method("flows.status", self.status)
        agent.register_method("metrics.text", lambda: self.store.metrics.exposition().decode())
        agent.register_method("metrics.serve", self.serve_metrics)

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


def _options(agent: Any) -> dict[str, Any]:
    try:
        config = json.loads((Path(agent.dir) / "config.json").read_text())
    except (OSError, ValueError, AttributeError):
        return {}
    value = config.get("observe", {})
    return value if isinstance(value, dict) else {}


def setup(agent: Any) -> FlowService:
    """Called by the agent (AGENT_PLUGINS) before pods are created."""
    service = FlowService(agent, _options(agent))
    service.register(agent)
    agent.flows = service
    agent.status_extras.append(lambda: {
        "flow_capacity": service.store.capacity,
        "metrics": f"http://127.0.0.1:{service.metrics_port}/metrics" if service.metrics_port else None})
    agent.add_endpoint_observer(service)
    return service
