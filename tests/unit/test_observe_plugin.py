"""The agent-side flow service's API methods (no kernel: no datapath is found, flows are ingested directly)."""

from dataclasses import dataclass, field
from typing import Any

import pytest

from workbench.agent.api import LocalAPI
from workbench.agent.flows import FlowService, ObserveOptions
from workbench.errors import ValidationError
from workbench.lab.model import Identity
from workbench.observe import synthetic
from workbench.observe.archive import load_parquet
from workbench.observe.ipc import from_ipc
from workbench.observe.metrics import metric_value, metrics_frame
from workbench.observe.synthetic import DEATHSTAR, DEATHSTAR_SVC, TIEFIGHTER, XWING


class Identities:
    def all(self):
        return [Identity(ep.identity, ep.labels) for ep in (XWING, TIEFIGHTER, DEATHSTAR)]


@dataclass
class Inventory:
    """What the flow service reads from the agent's LabContext."""

    endpoints: dict[str, Any] = field(default_factory=dict)
    services: list[Any] = field(default_factory=list)
    identities: Identities = field(default_factory=Identities)


class Harness:
    """The flow service with its methods served through the agent's LocalAPI (strict parameter types)."""

    def __init__(self) -> None:
        self.inventory = Inventory()
        self.flows = FlowService("wb-unit-node", self.inventory, ObserveOptions())
        self.api = LocalAPI()
        for name, fn in self.flows.methods().items():
            self.api.register(name, fn)
        self.methods = self.api.methods


@pytest.fixture
def agent():
    a = Harness()
    a.inventory.services.append(DEATHSTAR_SVC)
    for ep in (XWING, TIEFIGHTER, DEATHSTAR):
        a.inventory.endpoints[ep.pod] = ep
        a.flows.attach_endpoint(ep)
    a.flows.store.ingest(synthetic.random_events(300, seed=5))
    yield a
    a.flows.close()


def test_methods_are_registered(agent):
    assert {"flows.query", "flows.export", "flows.archive", "flows.status", "metrics.text",
            "metrics.serve"} <= set(agent.methods)


def test_query_filters_in_the_agent_and_follows_by_seq(agent):
    reply = agent.methods["flows.query"](filters={"verdict": "DROPPED", "from_pod": "xwing"})
    frame = from_ipc(reply.payload)
    assert len(frame) > 0 and set(frame.verdict) == {"DROPPED"} and set(frame.src_pod) == {"xwing"}
    assert (frame.dst_service.dropna() == "deathstar").all()
    seq = reply.meta["seq"]
    assert from_ipc(agent.methods["flows.query"](after=seq).payload).empty
    agent.flows.store.ingest(synthetic.random_events(7, seed=6))
    assert len(from_ipc(agent.methods["flows.query"](after=seq).payload)) == 7


def test_unknown_pod_lists_the_lab_pods(agent):
    with pytest.raises(ValidationError, match="pods: default/deathstar-6c94dcc57b-6chpk, default/tiefighter"):
        agent.methods["flows.query"](filters={"to_pod": "x-wing"})


def test_export_writes_parquet_that_loads_back(agent, tmp_path):
    out = tmp_path / "f.parquet"
    reply = agent.methods["flows.export"](path=str(out), filters={"type": "drop"})
    back = load_parquet(out)
    assert len(back) == reply["rows"] > 0 and set(back.event_type) == {"drop"}
    with pytest.raises(ValidationError, match="absolute"):
        agent.methods["flows.export"](path="relative.parquet")


def test_metrics_text_and_status(agent):
    agent.flows.store.record_lost(4)
    m = metrics_frame(agent.methods["metrics.text"]())
    assert metric_value(m, "hubble_flows_processed_total") == 300
    assert metric_value(m, "hubble_lost_events_total") == 4
    status = agent.methods["flows.status"]()
    assert status["seen"] == 300 and status["lost_events"] == 4 and status["reading"] is False
    lab_status = agent.flows.status_fields()
    assert lab_status == {"flow_capacity": agent.flows.store.capacity, "metrics": None, "archive": None}


def test_archive_method(agent, tmp_path):
    agent.methods["flows.archive"](directory=str(tmp_path / "arch"))
    agent.flows.store.ingest(synthetic.random_events(50, seed=8))
    agent.flows.archiver.close()
    assert len(load_parquet(tmp_path / "arch")) == 50
