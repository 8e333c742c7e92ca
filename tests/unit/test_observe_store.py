"""Flow store: bulk decode, vectorised enrichment, ring semantics, lost events, L7 rows."""

import numpy as np
import pandas as pd
import pytest

from workbench.observe import events as ev
from workbench.observe import schema, synthetic
from workbench.observe.store import FlowStore
from workbench.observe.synthetic import DEATHSTAR, TIEFIGHTER, WORLD_IP, XWING


def rule1_events():
    """What the datapath emits under rule1: xwing denied at the deathstar, tiefighter allowed."""
    return synthetic.events([
        dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, sport=41234, type="policy-verdict", verdict="DROPPED",
             drop_reason=133, src_identity=258, dst_identity=257),
        dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, sport=41234, type="drop", verdict="DROPPED", drop_reason=133,
             src_identity=258, dst_identity=257),
        dict(src=TIEFIGHTER.ipv4, dst=DEATHSTAR.ipv4, sport=50000, type="policy-verdict", verdict="FORWARDED",
             match_type=2, src_identity=259, dst_identity=257),
        dict(src=TIEFIGHTER.ipv4, dst=DEATHSTAR.ipv4, sport=50000, type="trace", verdict="FORWARDED",
             src_identity=259, dst_identity=257),
        dict(src=DEATHSTAR.ipv4, dst=TIEFIGHTER.ipv4, sport=80, dport=50000, type="trace", tcp_flags=0x12,
             is_reply=True, direction="EGRESS", src_identity=257, dst_identity=259),
        dict(src=XWING.ipv4, dst=WORLD_IP, sport=40001, dport=443, type="trace", direction="EGRESS",
             src_identity=258, dst_identity=2),
    ])


@pytest.fixture
def store():
    s = FlowStore(context=synthetic.star_wars_context())
    s.ingest_bytes(rule1_events().tobytes())
    return s


def test_frame_has_the_design_columns_and_dtypes(store):
    df = store.frame()
    schema.validate_flows(df)
    assert list(df.columns) == schema.COLUMNS
    assert str(df.time.dtype) == "datetime64[ns, UTC]"
    assert len(df) == 6


def test_rule1_rows_are_enriched_like_hubble(store):
    df = store.frame()
    denied = df[(df.src_pod == "xwing") & (df.verdict == "DROPPED")]
    assert len(denied) == 2
    assert set(denied.event_type) == {"policy-verdict", "drop"}
    assert (denied.drop_reason == 133).all() and (denied.drop_reason_desc == "POLICY_DENIED").all()
    assert (denied.traffic_direction == "INGRESS").all() and (denied.protocol == "TCP").all()
    assert (denied.dst_port == 80).all()
    assert all("k8s:class=deathstar" in labels for labels in denied.dst_labels)
    assert (denied.dst_pod == DEATHSTAR.pod).all() and (denied.dst_namespace == "default").all()
    assert (denied.dst_service == "deathstar").all()
    assert denied.iloc[0].policy_match_type == "none"
    allowed = df[(df.src_pod == "tiefighter")]
    assert set(allowed.verdict) == {"FORWARDED"}
    reply = df[df.is_reply.fillna(False)]
    assert reply.iloc[0].tcp_flags == "SYN,ACK" and reply.iloc[0].src_service == "deathstar"
    world = df[df.dst_ip == WORLD_IP].iloc[0]
    assert pd.isna(world.dst_pod) and list(world.dst_labels) == ["reserved:world"]
    assert (df.node_name == "wb-demo-node").all()


def test_ktime_becomes_wall_clock_utc(store):
    now = pd.Timestamp.now(tz="UTC")
    times = store.frame().time
    assert ((now - times).abs() < pd.Timedelta(seconds=5)).all()


def test_ring_keeps_the_last_capacity_rows_in_order():
    s = FlowStore(capacity=5, context=synthetic.star_wars_context())
    batch = synthetic.random_events(12)
    batch["sport"] = np.arange(12) + 1000
    s.ingest(batch[:3])
    s.ingest(batch[3:9])   # wraps
    assert s.frame().src_port.tolist() == [1004, 1005, 1006, 1007, 1008]
    s.ingest(batch[9:])    # wraps again, part of a batch
    assert s.frame().src_port.tolist() == [1007, 1008, 1009, 1010, 1011]
    assert s.frame(last=2).src_port.tolist() == [1010, 1011]
    assert s.seq == 12 and len(s) == 5


def test_one_batch_larger_than_the_ring_keeps_its_tail():
    s = FlowStore(capacity=4)
    batch = synthetic.random_events(10)
    batch["sport"] = np.arange(10)
    s.ingest(batch)
    assert s.frame().src_port.tolist() == [6, 7, 8, 9]


def test_after_returns_only_new_rows_for_follow(store):
    seq = store.frame().attrs["seq"]
    assert len(store.frame(after=seq)) == 0
    store.ingest(rule1_events()[:2])
    assert len(store.frame(after=seq)) == 2


def test_million_row_ring_is_supported():
    s = FlowStore(capacity=1_000_000, context=synthetic.star_wars_context())
    s.ingest(synthetic.random_events(300_000))
    s.ingest(synthetic.random_events(300_000, seed=1))
    assert len(s.frame()) == 600_000


def test_lost_events_are_counted_from_datapath_and_reader(store):
    store.set_datapath_lost(7)
    store.set_datapath_lost(7)          # cumulative counter: no double counting
    store.record_lost(2)
    assert store.frame().attrs["lost_events"] == 9
    assert store.flows(verdict="DROPPED").attrs["lost_events"] == 9


def test_truncated_record_counts_as_lost():
    s = FlowStore()
    raw = rule1_events().tobytes()
    s.ingest_bytes(raw + raw[:10])
    assert len(s.frame()) == 6 and s.lost_events == 1


def test_decode_rejects_partial_records():
    with pytest.raises(ValueError, match="whole number"):
        ev.decode(b"\0" * (ev.EVENT_DTYPE.itemsize + 1))


def test_context_update_applies_to_later_batches(store):
    renamed = XWING.__class__(**{**XWING.to_dict(), "pod": "xwing-2"})
    store.context.update(endpoints=[renamed, TIEFIGHTER, DEATHSTAR])
    store.ingest(rule1_events()[:1])
    pods = store.frame().src_pod.tolist()
    assert pods[0] == "xwing" and pods[-1] == "xwing-2"
    assert "default/xwing" in store.known_pods() and "default/xwing-2" in store.known_pods()


def test_l7_rows(store):
    store.add_l7(src_ip=XWING.ipv4, dst_ip=DEATHSTAR.ipv4, src_port=41300, dst_port=80, http_method="PUT",
                 http_url="http://deathstar.default.svc.cluster.local/v1/exhaust-port", http_code=403,
                 l7_latency_ns=2_000_000, verdict="DROPPED")
    row = store.frame().iloc[-1]
    assert row.event_type == "l7" and row.http_method == "PUT" and row.http_code == 403
    assert row.l7_latency_ns == 2_000_000 and row.src_pod == "xwing" and row.dst_service == "deathstar"
    assert row.summary.startswith("HTTP/1.1 403")
    schema.validate_flows(store.frame())


def test_connection_totals_sum_both_directions():
    s = FlowStore(context=synthetic.star_wars_context())
    s.ingest(synthetic.events([dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, type="conn-end", bytes=500,
                                    reply_bytes=1200)]))
    row = s.frame().iloc[0]
    assert row.bytes == 1700 and row.event_type == "trace" and row.summary == "connection end totals"


def test_raw_records_decode_into_hubbles_vocabulary():
    """Records written with the datapath's codes (as the ring reader hands them over) -> named columns."""
    from workbench.datapath import abi

    rec = np.zeros(3, ev.EVENT_DTYPE)
    rec["saddr"] = int.from_bytes(bytes([10, 77, 0, 10]), "little")
    rec["daddr"] = int.from_bytes(bytes([10, 77, 0, 11]), "little")
    rec["sport"], rec["dport"], rec["proto"], rec["tcp_flags"] = 40000, 80, abi.IPPROTO_TCP, abi.TCP_SYN | abi.TCP_ACK
    rec["verdict"] = [abi.VERDICT_DROPPED, abi.VERDICT_AUDIT, abi.VERDICT_DROPPED]
    rec["drop_reason"] = [abi.DROP_POLICY_DENY, abi.DROP_POLICY_DENIED, abi.DROP_FRAG_NOT_FOUND]
    rec["event_type"] = [abi.EVENT_DROP, abi.EVENT_POLICY_VERDICT, abi.EVENT_DROP]
    rec["direction"] = [abi.DIR_INGRESS, abi.DIR_EGRESS, abi.DIR_EGRESS]
    rec["match_type"] = [abi.MATCH_NONE, abi.MATCH_L3_L4, abi.MATCH_NONE]
    rec["ktime_ns"] = [1_000, 2_000, 3_000]
    store = FlowStore()
    assert store.ingest(ev.decode(rec.tobytes())) == 3
    df = store.frame()
    assert df.src_ip.tolist() == ["10.77.0.10"] * 3 and df.dst_ip.tolist() == ["10.77.0.11"] * 3
    assert df.verdict.tolist() == ["DROPPED", "AUDIT", "DROPPED"]
    assert df.drop_reason_desc.tolist() == ["POLICY_DENY", "POLICY_DENIED", "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND"]
    assert df.event_type.tolist() == ["drop", "policy-verdict", "drop"]
    assert df.traffic_direction.tolist() == ["INGRESS", "EGRESS", "EGRESS"]
    assert df.policy_match_type.tolist()[1] == "L3-L4"
    assert df.tcp_flags.tolist() == ["SYN,ACK"] * 3 and df.protocol.tolist() == ["TCP"] * 3
    assert df.time.iloc[1] - df.time.iloc[0] == pd.Timedelta(1000, "ns")
