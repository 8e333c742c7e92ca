"""Flows from the real datapath: real netns, real TC programs, real packets, drained in bulk into the store.

Topology (workbench.datapath.testbed): pods xwing, tiefighter and deathstar
with the demo's identities; the deathstar serves TCP 80. "rule1" in datapath
terms: deathstar's ingress is enforced and only tiefighter's identity may
reach TCP 80 (the compiler's job is tested elsewhere; here the entries are
written directly so that this test stays about observing).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import pandas as pd
import pytest

from tests.waiting import wait_until
from workbench.datapath.ringreader import RingReader
from workbench.datapath.testbed import Testbed
from workbench.lab.model import Endpoint, Identity, PolicyEntry
from workbench.observe import render
from workbench.observe.enrich import EnrichmentContext
from workbench.observe.metrics import metric_value, metrics_frame
from workbench.observe.store import FlowStore

XWING, TIEFIGHTER, DEATHSTAR = 258, 259, 257
LABELS = {
    XWING: ("k8s:class=xwing", "k8s:io.kubernetes.pod.namespace=default", "k8s:org=alliance"),
    TIEFIGHTER: ("k8s:class=tiefighter", "k8s:io.kubernetes.pod.namespace=default", "k8s:org=empire"),
    DEATHSTAR: ("k8s:class=deathstar", "k8s:io.kubernetes.pod.namespace=default", "k8s:org=empire"),
}
TCP = 6


def lab_name() -> str:
    return f"o{uuid.uuid4().hex[:7]}"


def context_for(bed: Testbed) -> EnrichmentContext:
    endpoints = []
    for ep in bed.endpoints.values():
        labels = LABELS[ep.identity]
        endpoints.append(Endpoint(**{**ep.to_dict(), "namespace": "default", "labels": labels}))
    return EnrichmentContext(bed.node, endpoints, [Identity(i, labels) for i, labels in LABELS.items()])


def drain_into(reader: RingReader, store: FlowStore, bed: Testbed, settle: float = 0.2) -> None:
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        reader.wait(0.05)
        store.ingest(reader.drain())
    store.set_datapath_lost(bed.datapath.lost_events())


def wait_judged(bed: Testbed, dropped: int) -> None:
    """Until the datapath has counted ``dropped`` policy drops: then every record of them is in the ring
    (or counted lost), and what the reader sees next is complete. The veth hands datagrams on a moment later."""
    def counted() -> bool:
        m = bed.datapath.metrics()
        return int(m[(m.verdict == "DROPPED") & (m.drop_reason == 133)].packets.sum()) >= dropped

    wait_until(counted, 10, f"{dropped} policy drops counted by the datapath")


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.create(lab_name(), {"xwing": XWING, "tiefighter": TIEFIGHTER, "deathstar": DEATHSTAR})
    try:
        tb.serve("deathstar", 80)
        yield tb
    finally:
        tb.destroy()


@pytest.fixture
def observed(bed: Testbed) -> Iterator[tuple[Testbed, FlowStore, RingReader]]:
    store = FlowStore(context=context_for(bed))
    reader = RingReader(bed.datapath.bpf[b"events"].map_fd)
    reader.drain()   # start from an empty ring
    try:
        yield bed, store, reader
    finally:
        reader.close()
        bed.datapath.policy_writer().apply([], set())


def apply_rule1(bed: Testbed) -> None:
    ds = bed.endpoints["deathstar"]
    bed.datapath.policy_writer().apply([PolicyEntry(ds.id, "ingress", TIEFIGHTER, TCP, 80, 16)],
                                       {(ds.id, "ingress")})


def test_rule1_xwing_dropped_tiefighter_forwarded(observed):
    bed, store, reader = observed
    apply_rule1(bed)
    assert bed.tcp("tiefighter", "deathstar", 80)
    assert not bed.tcp("xwing", "deathstar", 80, timeout=0.3)
    drain_into(reader, store, bed)
    df = store.frame()

    xwing = df[(df.src_pod == "xwing") & (df.dst_pod == "deathstar")]
    dropped = xwing[xwing.verdict == "DROPPED"]
    assert len(dropped) >= 2   # the policy verdict and the drop (SYN retransmits add more)
    assert set(dropped.event_type) >= {"drop", "policy-verdict"}
    assert (dropped.drop_reason == 133).all() and (dropped.drop_reason_desc == "POLICY_DENIED").all()
    assert (dropped.traffic_direction == "INGRESS").all()
    assert (dropped.protocol == "TCP").all() and (dropped.dst_port == 80).all()
    assert all("k8s:class=deathstar" in list(labels) for labels in dropped.dst_labels)
    assert (dropped.src_identity == XWING).all() and (dropped.dst_identity == DEATHSTAR).all()
    # xwing's own egress is not enforced: its lxc forwards (EGRESS), the deathstar's drops (INGRESS)
    assert not (xwing[xwing.traffic_direction == "INGRESS"].verdict == "FORWARDED").any()

    tie = df[(df.src_pod == "tiefighter") & (df.dst_pod == "deathstar")]
    assert len(tie) >= 1 and set(tie.verdict) == {"FORWARDED"}
    verdict = tie[(tie.event_type == "policy-verdict") & (tie.traffic_direction == "INGRESS")]
    assert len(verdict) == 1 and verdict.policy_match_type.iloc[0] == "L3-L4"

    now = pd.Timestamp.now(tz="UTC")
    assert ((now - df.time) < pd.Timedelta(seconds=10)).all()

    # the same rows through the filters, the compact output and the metrics
    assert len(store.flows(from_pod="xwing", verdict="DROPPED", to_port=80)) == len(dropped)
    line = render.compact_line(next(store.flows(from_pod="xwing", type="policy-verdict",
                                                traffic_direction="ingress").itertuples()))
    assert "policy-verdict:none INGRESS DENIED (TCP Flags: SYN)" in line
    m = metrics_frame(store.metrics.exposition())
    assert metric_value(m, "hubble_drop_total", reason="POLICY_DENIED", protocol="TCP") == \
        int((df.event_type == "drop").sum())
    assert metric_value(m, "hubble_flows_processed_total") == len(df)


def test_both_ends_of_a_connection_and_its_totals_without_policy(observed):
    bed, store, reader = observed
    assert bed.tcp("xwing", "deathstar", 80)
    drain_into(reader, store, bed, settle=0.4)
    df = store.frame()
    assert set(df.verdict) == {"FORWARDED"}
    conn = df[(df.src_pod == "xwing") & (df.dst_pod == "deathstar")]
    first = conn[(conn.event_type == "trace") & (conn.tcp_flags == "SYN")]
    assert set(first.traffic_direction) == {"EGRESS", "INGRESS"}   # xwing's lxc and the deathstar's lxc
    assert (first.summary == "TCP Flags: SYN").all()
    totals = conn[conn.summary == "connection end totals"]
    assert len(totals) >= 1 and (totals.bytes > 0).all()


def test_lost_counter_rises_when_the_ring_overflows() -> None:
    options = {"cflags": ["-DEVENTS_RING_PAGES=1"]}  # 4 KiB ring: a few dozen records
    with Testbed.create(lab_name(), {"xwing": XWING, "deathstar": DEATHSTAR}, datapath_options=options) as bed:
        store = FlowStore(context=context_for(bed))
        with RingReader(bed.datapath.bpf[b"events"].map_fd) as reader:
            ds = bed.endpoints["deathstar"]
            bed.datapath.policy_writer().apply([], {(ds.id, "ingress")})
            sender = bed.socket_in("xwing", socket.SOCK_DGRAM)
            try:
                for _ in range(300):   # each datagram: a policy-verdict and a drop record; nobody reads yet
                    sender.sendto(b"x", (ds.ipv4, 53))
            finally:
                sender.close()
            wait_judged(bed, 300)
            drain_into(reader, store, bed, settle=0.1)
        df = store.frame()
        assert 0 < len(df) < 600
        assert df.attrs["lost_events"] == bed.datapath.lost_events() > 400
        assert len(df) + df.attrs["lost_events"] >= 600   # every record is either read or counted
        m = metrics_frame(store.metrics.exposition())
        assert metric_value(m, "hubble_lost_events_total", source="datapath_ring_buffer") == df.attrs["lost_events"]
        assert render.format_compact(df).startswith(f"EVENTS LOST: {df.attrs['lost_events']}")


def test_bulk_reader_follows_the_ring_through_many_wraps() -> None:
    options = {"cflags": ["-DEVENTS_RING_PAGES=1"]}
    with Testbed.create(lab_name(), {"xwing": XWING, "deathstar": DEATHSTAR}, datapath_options=options) as bed:
        store = FlowStore(context=context_for(bed))
        with RingReader(bed.datapath.bpf[b"events"].map_fd) as reader:
            ds = bed.endpoints["deathstar"]
            bed.datapath.policy_writer().apply([], {(ds.id, "ingress")})
            sent = 0
            for _ in range(20):
                sender = bed.socket_in("xwing", socket.SOCK_DGRAM)
                try:
                    for _ in range(10):
                        sender.sendto(b"x", (ds.ipv4, 53))
                        sent += 1
                finally:
                    sender.close()
                time.sleep(0.01)   # paces the batches: the reader keeps up, the ring wraps without loss
                store.ingest(reader.drain())
            wait_judged(bed, sent)
            drain_into(reader, store, bed, settle=0.1)
        df = store.frame()
        assert store.lost_events == 0
        assert len(df) * 88 > 8 * 4096          # the 4 KiB ring wrapped several times
        drops = df[(df.event_type == "drop") & (df.src_pod == "xwing")]
        assert len(drops) == sent and (drops.drop_reason_desc == "POLICY_DENIED").all()
        assert (drops.protocol == "UDP").all() and (drops.dst_port == 53).all()
