"""flows.query of 100,000 flows across the agent socket: Arrow IPC (now) against JSON lines (before).

Both paths serve the same FlowService store (synthetic star-wars flows, no
kernel) through a real LocalAPI on a Unix socket and AgentClient, in this
process (server thread + client), and end with the same DataFrame:

- arrow: ``FlowService.query`` -> a binary reply of Arrow IPC stream bytes ->
  ``client.flows.query_flows`` (pyarrow decode, dtypes as sent);
- json_lines, the baseline: the former ``flows.query`` body (the filtered
  frame as ``to_json_lines`` text inside the JSON reply) -> ``read_json_lines``
  (a json.loads per row, dtypes rebuilt by ``coerce_flows``). It is kept here
  only, as the baseline.

Figures: end-to-end milliseconds per query, the agent's encode and the
client's decode alone, and the reply size, each with the JSON-lines figure
as baseline.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.figures import figure
from workbench.agent.api import LocalAPI
from workbench.agent.flows import FlowService, ObserveOptions
from workbench.client.flows import query_flows
from workbench.client.transport import AgentClient
from workbench.lab.model import Endpoint, Identity, Service
from workbench.observe import synthetic
from workbench.observe.filters import flows
from workbench.observe.ipc import from_ipc, to_ipc
from workbench.observe.render import read_json_lines, to_json_lines

ROWS = 100_000
BASELINE_METHOD = "bench.flows_query_json_lines"


@dataclass
class DemoInventory:
    """The star-wars demo as the flow service's inventory (what the agent's LabContext holds)."""

    endpoints: dict[str, Endpoint] = field(default_factory=lambda: {
        ep.pod: ep for ep in (synthetic.XWING, synthetic.TIEFIGHTER, synthetic.DEATHSTAR)})
    services: list[Service] = field(default_factory=lambda: [synthetic.DEATHSTAR_SVC])

    @property
    def identities(self) -> DemoInventory:
        return self

    def all(self) -> list[Identity]:
        return [Identity(ep.identity, ep.labels) for ep in self.endpoints.values()]


def json_lines_query(service: FlowService) -> Callable[..., dict[str, Any]]:
    """The former ``flows.query``: the same selection, sent as JSON lines inside the JSON reply."""

    def query(filters: dict[str, Any] | None = None, after: int | None = None) -> dict[str, Any]:
        frame = service.store.frame(after=after)
        frame.attrs["known_pods"] = service.store.known_pods()
        result = flows(frame, **(filters or {}))
        result.attrs.pop("known_pods", None)
        return {"jsonl": to_json_lines(result), "seq": int(frame.attrs["seq"]),
                "lost_events": service.store.lost_events}

    return query


def json_lines_flows(client: AgentClient) -> pd.DataFrame:
    """The former client side: parse the JSON-lines text back into a frame."""
    reply = client.call(BASELINE_METHOD)
    frame = read_json_lines(reply["jsonl"], document=f"flows of lab {client.lab}")
    frame.attrs["lost_events"] = int(reply.get("lost_events", 0))
    frame.attrs["seq"] = int(reply.get("seq", 0))
    return frame


def timed_ms(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    samples, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples, value


def run(quick: bool) -> dict[str, Any]:
    # One JSON-lines query of 100k rows takes seconds: quick mode repeats it less (never fewer rows);
    # the Arrow path is cheap enough to repeat as often in both modes.
    arrow_repeats = 7
    repeats, breakdown_repeats = (2, 1) if quick else (7, 5)
    service = FlowService("wb-bench-node", DemoInventory(), ObserveOptions(capacity=ROWS))
    service.sync_context(force=True)
    service.store.ingest(synthetic.random_events(ROWS, seed=1))
    api = LocalAPI()
    api.register("flows.query", service.query)
    api.register(BASELINE_METHOD, json_lines_query(service))
    with tempfile.TemporaryDirectory(prefix="wb-bench-") as tmp:
        path = Path(tmp) / "agent.sock"
        server = threading.Thread(target=api.serve, args=(path,), name="bench-api", daemon=True)
        server.start()
        client = AgentClient("bench", timeout=300, socket_path=path)
        try:
            while not path.exists():   # serve() binds the socket in its thread
                time.sleep(0.02)
            arrow_ms, arrow_frame = timed_ms(lambda: query_flows(client), arrow_repeats)
            json_ms, json_frame = timed_ms(lambda: json_lines_flows(client), repeats)
        finally:
            api.shutdown()
            server.join(timeout=10)

    frame = service.store.frame()
    service.close()
    pd.testing.assert_frame_equal(arrow_frame, frame)                         # exact, dtypes included
    pd.testing.assert_frame_equal(json_frame, frame, check_categorical=False)  # same values
    arrow_encode, payload = timed_ms(lambda: to_ipc(frame), arrow_repeats)
    json_encode, text = timed_ms(lambda: json.dumps({"ok": True, "result": {"jsonl": to_json_lines(frame)}}),
                                 breakdown_repeats)
    arrow_decode, _ = timed_ms(lambda: from_ipc(payload), arrow_repeats)
    json_decode, _ = timed_ms(lambda: read_json_lines(json.loads(text)["result"]["jsonl"]), breakdown_repeats)

    def compare(ours: list[float], before: list[float], unit: str = "ms") -> dict[str, Any]:
        return figure(ours, unit, baseline=figure(before, unit, higher_is_better=False), higher_is_better=False)

    return {
        "rows": len(frame),
        "repeats": {"arrow": arrow_repeats, "json_lines_query": repeats, "json_lines_encode_decode": breakdown_repeats},
        "query_end_to_end_ms": compare(arrow_ms, json_ms),
        "agent_encode_ms": compare(arrow_encode, json_encode),
        "client_decode_ms": compare(arrow_decode, json_decode),
        "reply_mb": compare([len(payload) / 1e6], [len(text.encode()) / 1e6], "MB"),
    }
