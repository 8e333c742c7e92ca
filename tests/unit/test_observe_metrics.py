"""Hubble metrics: counters equal the DataFrame for the same events; exposition, HTTP, parsing."""

import urllib.request

import pytest

from workbench.observe import synthetic
from workbench.observe.metrics import FlowMetrics, flow_type_labels, metric_value, metrics_frame
from workbench.observe.store import FlowStore
from workbench.observe.synthetic import DEATHSTAR, XWING


@pytest.fixture
def store():
    s = FlowStore(capacity=100_000, context=synthetic.star_wars_context())
    s.ingest(synthetic.random_events(20_000, seed=3))
    s.ingest(synthetic.random_events(5_000, seed=4))
    s.add_l7(src_ip=XWING.ipv4, dst_ip=DEATHSTAR.ipv4, src_port=1, dst_port=80, http_method="PUT",
             http_url="/v1/exhaust-port", http_code=403, verdict="DROPPED")
    s.set_datapath_lost(11)
    s.record_lost(2)
    s.set_datapath_counters({"policy_allowed_packets": 42.0, "policy_denied_packets": 7.0})
    return s


def test_counters_match_the_dataframe(store):
    df = store.frame()
    m = metrics_frame(store.metrics.exposition())
    expected: dict[tuple[str, str, str], int] = {}
    for (event_type, direction, verdict), count in df.groupby(
            ["event_type", "traffic_direction", "verdict"], observed=True).size().items():
        key = (*flow_type_labels(event_type, direction), verdict)
        expected[key] = expected.get(key, 0) + count
    assert len(expected) >= 6
    for (kind, subtype, verdict), count in expected.items():
        assert metric_value(m, "hubble_flows_processed_total", type=kind, subtype=subtype,
                            verdict=verdict) == count, (kind, subtype, verdict)
    assert metric_value(m, "hubble_flows_processed_total") == len(df)
    drops = df[df.event_type == "drop"]
    for (reason, proto), count in drops.groupby(["drop_reason_desc", "protocol"], observed=True).size().items():
        assert metric_value(m, "hubble_drop_total", reason=reason, protocol=proto) == count
    assert metric_value(m, "hubble_drop_total") == len(drops)
    verdicts = df[df.event_type == "policy-verdict"]
    for (direction, match, verdict), count in verdicts.groupby(
            ["traffic_direction", "policy_match_type", "verdict"], observed=True).size().items():
        assert metric_value(m, "hubble_policy_verdicts_total", direction=direction.lower(),
                            match=match.lower(), action=verdict.lower()) == count
    assert metric_value(m, "hubble_lost_events_total") == df.attrs["lost_events"] == 13
    assert metric_value(m, "hubble_lost_events_total", source="datapath_ring_buffer") == 11
    assert metric_value(m, "workbench_datapath_stat", name="policy_denied_packets") == 7.0


def test_registries_are_per_store():
    a, b = FlowStore(), FlowStore()
    a.ingest(synthetic.random_events(10))
    assert metric_value(metrics_frame(b.metrics.exposition()), "hubble_flows_processed_total") == 0
    assert metric_value(metrics_frame(a.metrics.exposition()), "hubble_flows_processed_total") == 10


def test_http_server_serves_the_exposition_on_loopback(store):
    port = store.metrics.serve(port=0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'hubble_drop_total{protocol="TCP",reason="POLICY_DENIED"}' in body
    finally:
        store.metrics.stop()


def test_serving_off_loopback_is_refused():
    with pytest.raises(ValueError, match="loopback"):
        FlowMetrics().serve(addr="0.0.0.0")
