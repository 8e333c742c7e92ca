"""Dashboard widget state after feeding real store frames; service map traces and counts."""

import numpy as np
import pandas as pd
import pytest

from workbench.observe import synthetic
from workbench.observe.dashboard import ALL, observe_dashboard
from workbench.observe.servicemap import service_edges, service_map
from workbench.observe.store import FlowStore
from workbench.observe.synthetic import DEATHSTAR, TIEFIGHTER, XWING

pytest.importorskip("anywidget")


@pytest.fixture
def store():
    return FlowStore(capacity=100_000, context=synthetic.star_wars_context())


def test_refresh_updates_the_figures_in_place(store):
    store.ingest(synthetic.random_events(3000, seed=1))
    dash = observe_dashboard(store)
    rate, drops, talkers = dash.rate, dash.drops, dash.talkers
    df = store.frame()
    by_verdict = {t.name: sum(t.y) for t in rate.data}
    assert by_verdict == {v: int((df.verdict == v).sum()) for v in by_verdict}
    expected_drops = df[df.event_type == "drop"].drop_reason_desc.astype(str).value_counts()
    assert dict(zip(drops.data[0].x, drops.data[0].y, strict=True)) == expected_drops.to_dict()
    assert len(talkers.data[0].y) == 10
    assert "<table" in dash.table.value and dash.table.value.count("<tr>") == 1 + 15

    store.ingest(synthetic.random_events(500, seed=2))
    assert dash.refresh() == 500
    assert dash.rate is rate and dash.rate.data[0] is rate.data[0]   # same figure, same traces
    assert sum(sum(t.y) for t in dash.rate.data) == 3500
    assert dash.refresh() == 0


def test_lost_events_are_shown(store):
    store.ingest(synthetic.random_events(10))
    store.set_datapath_lost(12)
    dash = observe_dashboard(store)
    assert "lost events: <b>12</b>" in dash.status.value


def test_filters_recompute_from_the_window(store):
    store.ingest(synthetic.random_events(2000, seed=3))
    dash = observe_dashboard(store)
    df = store.frame()
    dash.verdict_filter.value = "DROPPED"
    assert sum(sum(t.y) for t in dash.rate.data) == int((df.verdict == "DROPPED").sum())
    assert sum(dash.rate.data[0].y) == 0     # FORWARDED trace empty under the filter
    assert "xwing" in dash.pod_filter.options
    dash.pod_filter.value = "xwing"
    sel = df[(df.verdict == "DROPPED") & ((df.src_pod == "xwing") | (df.dst_pod == "xwing"))]
    assert sum(sum(t.y) for t in dash.rate.data) == len(sel)
    dash.verdict_filter.value = ALL
    dash.pod_filter.value = ALL
    assert sum(sum(t.y) for t in dash.rate.data) == len(df)


def test_pause_freezes_the_display_but_not_the_counts(store):
    store.ingest(synthetic.random_events(100))
    dash = observe_dashboard(store)
    dash.pause_button.value = True
    store.ingest(synthetic.random_events(50, seed=9))
    dash.refresh()
    assert sum(sum(t.y) for t in dash.rate.data) == 100
    dash.pause_button.value = False
    assert sum(sum(t.y) for t in dash.rate.data) == 150


def test_background_thread_refreshes(store):
    import time
    dash = observe_dashboard(store)
    dash.start(interval=0.05)
    try:
        store.ingest(synthetic.random_events(40))
        deadline = time.monotonic() + 5
        while dash.total < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert dash.total == 40
    finally:
        dash.stop()


def test_dashboard_of_a_static_frame(store):
    store.ingest(synthetic.random_events(30))
    dash = observe_dashboard(store.frame())
    assert dash.total == 30 and dash.refresh() == 0


def test_service_map_edges_and_counts(store):
    rows = [dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, sport=41000 + i, type="drop", verdict="DROPPED",
                 drop_reason=133) for i in range(3)]
    rows += [dict(src=TIEFIGHTER.ipv4, dst=DEATHSTAR.ipv4, sport=42000 + i, type="trace") for i in range(5)]
    rows += [dict(src=DEATHSTAR.ipv4, dst=TIEFIGHTER.ipv4, sport=80, dport=42000, type="trace", is_reply=True)]
    rows += [dict(src=XWING.ipv4, dst=synthetic.WORLD_IP, dport=443, type="trace", dst_identity=2)]
    store.ingest(synthetic.events(rows))
    edges = service_edges(store.frame())
    got = {(r.source, r.destination, r.verdict): r.flows for r in edges.itertuples()}
    assert got == {("default/xwing", "svc:default/deathstar", "DROPPED"): 3,
                   ("default/tiefighter", "svc:default/deathstar", "FORWARDED"): 5,
                   ("default/xwing", "world", "FORWARDED"): 1}
    fig = service_map(store.frame())
    names = [t.name for t in fig.data]
    assert "DROPPED" in names and "FORWARDED" in names
    dropped_counts = next(t for t in fig.data if t.name == "DROPPED flows")
    assert list(dropped_counts.text) == ["3"]
    assert next(t for t in fig.data if t.name == "DROPPED").line.color == "#d62728"
    nodes = next(t for t in fig.data if t.name == "nodes")
    assert set(nodes.text) == {"default/xwing", "default/tiefighter", "default/deathstar", "world"}


def test_service_map_of_no_flows_is_an_empty_figure():
    from workbench.observe.schema import empty_flows
    assert len(service_map(empty_flows()).data) == 0
    assert np.asarray(service_edges(empty_flows()).columns).tolist()[:3] == ["source", "destination", "verdict"]
    assert isinstance(service_edges(empty_flows()), pd.DataFrame)
