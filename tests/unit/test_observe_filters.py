"""hubble-observe filters over real store frames: exact row selection and errors that list valid values."""

import pandas as pd
import pytest

from workbench.errors import ValidationError
from workbench.observe import synthetic
from workbench.observe.filters import flows, parse_time
from workbench.observe.store import FlowStore
from workbench.observe.synthetic import DEATHSTAR, TIEFIGHTER, WORLD_IP, XWING


@pytest.fixture
def store():
    s = FlowStore(context=synthetic.star_wars_context())
    s.ingest(synthetic.events([
        dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, sport=41234, type="policy-verdict", verdict="DROPPED",
             drop_reason=133),                                                                      # 0
        dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, sport=41234, type="drop", verdict="DROPPED", drop_reason=133),  # 1
        dict(src=TIEFIGHTER.ipv4, dst=DEATHSTAR.ipv4, sport=50000, type="trace"),                # 2
        dict(src=DEATHSTAR.ipv4, dst=TIEFIGHTER.ipv4, sport=80, dport=50000, type="trace", is_reply=True,
             direction="EGRESS", tcp_flags=0x12),                                                 # 3
        dict(src=XWING.ipv4, dst=WORLD_IP, dport=53, proto=17, type="trace", direction="EGRESS", dst_identity=2),  # 4
        dict(src=TIEFIGHTER.ipv4, dst=DEATHSTAR.ipv4, type="drop", verdict="DROPPED", drop_reason=181),  # 5
    ]))
    s.add_l7(src_ip=TIEFIGHTER.ipv4, dst_ip=DEATHSTAR.ipv4, src_port=50010, dst_port=80, http_method="PUT",
             http_url="http://deathstar.default.svc.cluster.local/v1/exhaust-port", http_code=403,
             verdict="DROPPED")                                                                    # 6
    s.add_l7(src_ip=TIEFIGHTER.ipv4, dst_ip=DEATHSTAR.ipv4, src_port=50011, dst_port=80, http_method="POST",
             http_url="http://deathstar.default.svc.cluster.local/v1/request-landing", http_code=200)  # 7
    return s


def ports(df):
    return df.src_port.tolist()


@pytest.mark.parametrize("filters, expected", [
    (dict(verdict="DROPPED"), [41234, 41234, 40000, 50010]),
    (dict(verdict=["dropped", "forwarded"], type="drop"), [41234, 40000]),
    (dict(event_type="policy-verdict"), [41234]),
    (dict(from_pod="xwing"), [41234, 41234, 40000]),
    (dict(from_pod="default/tiefighter", to_pod="deathstar"), [50000, 40000, 50010, 50011]),
    (dict(pod="tiefighter", type="trace"), [50000, 80]),
    (dict(to_label="class=deathstar", verdict="DROPPED", type="drop"), [41234, 40000]),
    (dict(from_label="k8s:org=empire,class=deathstar"), [80]),
    (dict(label="reserved:world"), [40000]),
    (dict(from_identity=258), [41234, 41234, 40000]),
    (dict(to_ip="192.0.2.0/24"), [40000]),
    (dict(ip=DEATHSTAR.ipv4, protocol="udp"), []),
    (dict(protocol="UDP"), [40000]),
    (dict(port=53), [40000]),
    (dict(to_port=80, type="trace"), [50000]),
    (dict(drop_reason="POLICY_DENY"), [40000]),
    (dict(drop_reason=133, type="drop"), [41234]),
    (dict(http_method="PUT"), [50010]),
    (dict(http_path=r"^/v1/request-"), [50011]),
    (dict(http_status="4+"), [50010]),
    (dict(http_status=200), [50011]),
    (dict(to_service="deathstar", type="l7"), [50010, 50011]),
    (dict(traffic_direction="egress"), [80, 40000]),
    (dict(verdict="DROPPED", last=2), [40000, 50010]),
    (dict(since="1m"), [41234, 41234, 50000, 80, 40000, 40000, 50010, 50011]),
    (dict(until="1m"), []),
])
def test_filters_select_exactly_the_right_rows(store, filters, expected):
    assert ports(flows(store, **filters)) == expected
    assert ports(flows(store.frame(), **filters)) == expected


@pytest.mark.parametrize("filters, message", [
    (dict(verdict="DENIED"), "valid: FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR"),
    (dict(type="flow"), "valid: trace, drop, policy-verdict, l7"),
    (dict(from_pod="x-wing"), "pods: default/deathstar-6c94dcc57b-6chpk, default/tiefighter, default/xwing"),
    (dict(to_pod="kube-system/xwing"), "unknown pod"),
    (dict(protocol="QUIC"), "valid: TCP, UDP"),
    (dict(frm_pod="xwing"), "unknown flow filter 'frm_pod'"),
    (dict(http_status="teapot"), "invalid HTTP status"),
    (dict(since="yesterday-ish"), "neither a time nor a duration"),
    (dict(port=70000), "out of range"),
    (dict(ip="10.0.0.300"), "invalid IP"),
    (dict(http_path="("), "invalid regular expression"),
])
def test_bad_filter_values_are_one_line_errors(store, filters, message):
    with pytest.raises(ValidationError) as err:
        flows(store, **filters)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_frame_knows_pods_from_its_rows(store):
    frame = store.frame()
    with pytest.raises(ValidationError, match="unknown pod 'nosuchpod'"):
        flows(frame, from_pod="nosuchpod")


def test_parse_time_accepts_durations_and_timestamps():
    now = pd.Timestamp("2026-11-26T06:40:00Z")
    assert parse_time("5m", now=now) == pd.Timestamp("2026-11-26T06:35:00Z")
    assert parse_time("2026-11-26T06:00:00", now=now) == pd.Timestamp("2026-11-26T06:00:00Z")
    assert parse_time(pd.Timestamp("2026-11-26T07:00:00+01:00")) == pd.Timestamp("2026-11-26T06:00:00Z")


def test_filtering_keeps_lost_events(store):
    store.record_lost(4)
    assert flows(store, verdict="FORWARDED").attrs["lost_events"] == 4
