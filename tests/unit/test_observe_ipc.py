"""Flows as Arrow IPC: every column keeps its exact dtype (empty frames too), and flows.query carries them
from the agent's FlowService over a real socket to the client's DataFrame."""

import threading
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest

from workbench.agent.api import LocalAPI
from workbench.agent.flows import FlowService, ObserveOptions
from workbench.agent.l7.flows import DnsExchange, append_rows, dns_rows
from workbench.client.flows import query_flows
from workbench.client.transport import AgentClient
from workbench.errors import ValidationError
from workbench.lab.model import Identity
from workbench.observe import schema, synthetic
from workbench.observe.ipc import from_ipc, to_ipc
from workbench.observe.store import FlowStore
from workbench.observe.synthetic import DEATHSTAR, DEATHSTAR_SVC, TIEFIGHTER, XWING


def fill(store):
    """Rows that give every column a value somewhere, and a missing value where one can be missing."""
    store.ingest(synthetic.random_events(400, seed=3))
    store.ingest(synthetic.events([dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, sport=41234, type="policy-verdict",
                                        verdict="DROPPED", drop_reason=133, src_identity=258, dst_identity=257),
                                   dict(src=DEATHSTAR.ipv4, dst=TIEFIGHTER.ipv4, sport=80, dport=41301,
                                        tcp_flags=0x12, is_reply=True)]))
    store.add_l7(src_ip=XWING.ipv4, dst_ip=DEATHSTAR.ipv4, src_port=41300, dst_port=80, http_method="POST",
                 http_url="http://deathstar/v1/request-landing", http_code=503, l7_latency_ns=2_500_000,
                 is_reply=True)
    store.add_l7(src_ip=TIEFIGHTER.ipv4, dst_ip=DEATHSTAR.ipv4, src_port=41301, dst_port=80, http_method="GET",
                 http_url="http://deathstar/v1/", http_code=None, l7_latency_ns=None, is_reply=False)
    store.context.update(names=synthetic.dns_names())   # src_names / dst_names of the rows after this
    store.ingest(synthetic.random_events(100, seed=5))
    append_rows(store, [row for ex in synthetic.dns_exchanges() for row in dns_rows(DnsExchange(**ex))])
    store.record_lost(2)


@pytest.fixture
def frame():
    store = FlowStore(context=synthetic.star_wars_context())
    fill(store)
    frame = store.frame()
    frame.loc[0, "is_reply"] = pd.NA   # the store always knows; a frame from elsewhere may not
    return frame


def assert_exact_flow_dtypes(frame):
    schema.validate_flows(frame)
    for name, dtype in schema.FLOW_DTYPES.items():
        actual = frame[name].dtype
        if isinstance(actual, pd.CategoricalDtype):
            assert actual.categories.dtype == "str", name
            if not schema.is_dynamic(dtype):
                assert actual == dtype, name


def test_every_column_has_a_value_and_a_gap_to_carry(frame):
    for name in schema.COLUMNS:
        assert frame[name].notna().any(), f"{name} never has a value: the round trip would not test it"
    for name in ("is_reply", "http_code", "l7_latency_ns", "http_url", "http_method", "src_pod", "dst_service",
                 "dns_query", "dns_rcode", "dns_ttl"):
        assert frame[name].isna().any(), f"{name} is never missing"
    for name in [*schema.LABEL_COLUMNS, *schema.DNS_LIST_COLUMNS, *schema.NAME_COLUMNS, "egress_allowed_by"]:
        sizes = frame[name].list.len()
        assert (sizes == 0).any() and (sizes > 0).any(), f"{name} is never empty or never filled"


def test_round_trip_keeps_values_dtypes_categories_and_attrs(frame):
    back = from_ipc(to_ipc(frame))
    pd.testing.assert_frame_equal(back, frame)
    assert_exact_flow_dtypes(back)
    assert back.attrs["lost_events"] == 2
    assert back.time.iloc[-1].value == frame.time.iloc[-1].value      # nanoseconds
    assert str(back.time.dt.tz) == "UTC"
    assert list(back.src_labels.iloc[0]) == list(frame.src_labels.iloc[0])


@pytest.mark.parametrize("empty", [schema.empty_flows, lambda: FlowStore().frame().iloc[:0]],
                         ids=["empty_flows", "filtered_to_nothing"])
def test_empty_frames_keep_every_dtype(empty):
    source = empty()
    back = from_ipc(to_ipc(source))
    assert len(back) == 0 and list(back.columns) == schema.COLUMNS
    pd.testing.assert_frame_equal(back, source, check_index_type=False)
    assert_exact_flow_dtypes(back)


def test_unused_categories_survive(frame):
    drops = frame[frame.verdict == "DROPPED"]
    back = from_ipc(to_ipc(drops))
    assert list(back.src_ip.cat.categories) == list(drops.src_ip.cat.categories)
    assert list(back.verdict.cat.categories) == schema.VERDICTS


def test_bytes_that_are_not_a_flow_stream_are_a_validation_error():
    with pytest.raises(ValidationError, match="flows of lab x: not an Arrow IPC stream"):
        from_ipc(b"not arrow at all", document="flows of lab x")
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    table = pa.table({"a": [1]})
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(ValidationError, match="not a workbench flow table: missing columns"):
        from_ipc(sink.getvalue().to_pybytes())


@dataclass
class Identities:
    def all(self):
        return [Identity(ep.identity, ep.labels) for ep in (XWING, TIEFIGHTER, DEATHSTAR)]


@dataclass
class Inventory:
    endpoints: dict[str, Any] = field(default_factory=lambda: {ep.pod: ep for ep in (XWING, TIEFIGHTER, DEATHSTAR)})
    services: list[Any] = field(default_factory=lambda: [DEATHSTAR_SVC])
    identities: Identities = field(default_factory=Identities)


def test_flows_query_over_the_socket_gives_the_agents_frame(tmp_path):
    service = FlowService("wb-demo-node", Inventory(), ObserveOptions())
    service.sync_context(force=True)
    fill(service.store)
    api = LocalAPI()
    api.register("flows.query", service.query)
    path = tmp_path / "agent.sock"
    thread = threading.Thread(target=api.serve, args=(path,), daemon=True)
    thread.start()
    client = AgentClient("unit", timeout=10, socket_path=path)
    try:
        for _ in range(100):
            if path.exists():
                break
            threading.Event().wait(0.02)
        everything = query_flows(client)
        expected = service.store.frame()
        pd.testing.assert_frame_equal(everything, expected, check_like=False, check_flags=False)
        assert_exact_flow_dtypes(everything)
        assert everything.attrs == {"seq": expected.attrs["seq"], "lost_events": 2}

        l7 = query_flows(client, event_type="l7", http_method=["GET", "POST"])
        assert list(l7.http_code) == [503, pd.NA] and l7.http_code.dtype == "Int16"
        github = query_flows(client, dns_query=r"^api\.github\.com\.$")   # the DNS filters cross the socket
        assert github.summary.tolist() == ["DNS Query api.github.com. A",
                                           'DNS Answer "192.0.2.20" TTL: 30 (Proxy api.github.com. A)']
        assert list(github.dns_ips.iloc[1]) == ["192.0.2.20"] and github.dns_ttl.dtype == "UInt32"
        to_world = query_flows(client, to_fqdn="*.example.org")
        assert len(to_world) and set(to_world.dst_ip) == {synthetic.WORLD_IP}
        nothing = query_flows(client, after=everything.attrs["seq"])
        assert len(nothing) == 0
        assert_exact_flow_dtypes(nothing)
    finally:
        api.shutdown()
        thread.join(timeout=5)
        service.close()
