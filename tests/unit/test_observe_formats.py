"""JSON lines round-trip, compact/table output, parquet archive round-trip and bad files."""

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.errors import NotFoundError, ValidationError
from workbench.observe import render, schema, synthetic
from workbench.observe.archive import ContinuousArchiver, export_parquet, load_parquet
from workbench.observe.store import FlowStore
from workbench.observe.synthetic import DEATHSTAR, XWING


@pytest.fixture
def frame():
    s = FlowStore(context=synthetic.star_wars_context())
    s.ingest(synthetic.random_events(500))
    s.ingest(synthetic.events([dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, sport=41234, type="policy-verdict",
                                    verdict="DROPPED", drop_reason=133, src_identity=258, dst_identity=257)]))
    s.add_l7(src_ip=XWING.ipv4, dst_ip=DEATHSTAR.ipv4, src_port=41300, dst_port=80, http_method="GET",
             http_url="http://deathstar/v1/", http_code=200, l7_latency_ns=1_234_567, is_reply=True)
    s.record_lost(5)
    df = s.frame()
    df.attrs.pop("seq")
    return df


def test_json_lines_round_trip_into_an_identical_frame(frame):
    text = render.to_json_lines(frame)
    lines = text.splitlines()
    assert lines[0] == '{"lost_events": 5}' and len(lines) == len(frame) + 1
    back = render.read_json_lines(text)
    pd.testing.assert_frame_equal(back, frame)
    assert back.attrs["lost_events"] == 5
    assert back.time.iloc[0].value == frame.time.iloc[0].value   # nanoseconds survive


def test_json_lines_have_the_design_fields(frame):
    import json
    record = json.loads(render.to_json_lines(frame).splitlines()[1])
    assert list(record) == schema.COLUMNS


def test_json_reader_rejects_garbage_and_foreign_fields():
    with pytest.raises(ValidationError, match="line 1 is not JSON"):
        render.read_json_lines("{nope\n")
    with pytest.raises(ValidationError, match="foreign columns"):
        render.read_json_lines('{"flow": {"verdict": "DROPPED"}}\n')


def test_compact_line_reads_like_hubble(frame):
    row = next(frame[frame.event_type == "policy-verdict"].iloc[[-1]].itertuples(index=False))
    line = render.compact_line(row)
    assert "default/xwing:41234 (ID:258) -> default/deathstar-6c94dcc57b-6chpk:80 (ID:257)" in line
    assert line.endswith("policy-verdict:none INGRESS DENIED (TCP Flags: SYN)")
    assert render.format_compact(frame).splitlines()[0] == "EVENTS LOST: 5"


def test_table_is_aligned(frame):
    lines = render.format_table(frame.iloc[:20]).splitlines()
    assert lines[0] == "EVENTS LOST: 5"
    header = lines[1]
    col = header.index("DESTINATION")
    assert header.startswith("TIMESTAMP")
    assert all(line[col - 2:col] == "  " for line in lines[2:])


def test_parquet_round_trip_keeps_columns_dtypes_and_lost_events(frame, tmp_path):
    path = export_parquet(frame, tmp_path / "flows.parquet")
    back = load_parquet(path)
    pd.testing.assert_frame_equal(back, frame)
    assert back.attrs["lost_events"] == 5
    assert isinstance(back.verdict.dtype, pd.CategoricalDtype)
    assert str(back.time.dtype) == "datetime64[ns, UTC]"


def test_empty_frame_round_trips(tmp_path):
    empty = schema.empty_flows()
    back = load_parquet(export_parquet(empty, tmp_path / "e.parquet"))
    pd.testing.assert_frame_equal(back, empty)


def test_corrupt_and_foreign_parquet_files_are_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(ValidationError, match="not a readable parquet file"):
        load_parquet(corrupt)
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1, 2], "verdict": ["x", "y"]}), foreign)
    with pytest.raises(ValidationError, match=r"not a workbench flow table: missing columns \['time'"):
        load_parquet(foreign)
    with pytest.raises(NotFoundError):
        load_parquet(tmp_path / "absent.parquet")


def test_export_refuses_a_frame_that_is_not_a_flow_table(tmp_path):
    with pytest.raises(ValidationError, match="columns differ"):
        export_parquet(pd.DataFrame({"a": [1]}), tmp_path / "x.parquet")


def test_continuous_archiver_rotates_and_loads_back(tmp_path):
    s = FlowStore(capacity=100, context=synthetic.star_wars_context())
    archiver = ContinuousArchiver(s, tmp_path / "archive", rotate_rows=250, flush_rows=100, flush_seconds=60)
    batches = [synthetic.random_events(100, seed=i) for i in range(6)]
    for b in batches:
        s.ingest(b)
    archiver.close()
    assert archiver.rows_written == 600 and len(archiver.files) == 2
    back = load_parquet(tmp_path / "archive")
    assert len(back) == 600                 # more than the ring keeps
    schema.validate_flows(back)
    expected_ports = np.concatenate([b["sport"] for b in batches])
    assert back.src_port.to_numpy().tolist() == expected_ports.tolist()


def test_archiver_flushes_on_time(tmp_path):
    s = FlowStore(context=synthetic.star_wars_context())
    archiver = ContinuousArchiver(s, tmp_path, flush_rows=10**6, flush_seconds=0.05)
    s.ingest(synthetic.random_events(10))
    deadline = time.monotonic() + 5
    while archiver.rows_written < 10 and time.monotonic() < deadline:
        time.sleep(0.01)   # the writer thread flushes on its own clock: no further batch needed
    assert archiver.rows_written == 10
    archiver.close()
    archiver.close()


def test_coerce_rejects_values_outside_the_vocabulary(frame):
    bad = frame.astype({"verdict": "object"})
    bad.loc[0, "verdict"] = "MAYBE"
    with pytest.raises(ValidationError, match="unknown values \\['MAYBE'\\]"):
        schema.coerce_flows(bad)


def test_drop_reason_table_has_the_documented_codes():
    assert schema.drop_reason_name(132) == "INVALID_SOURCE_IP"
    assert schema.drop_reason_name(133) == "POLICY_DENIED"
    assert schema.drop_reason_name(158) == "SERVICE_BACKEND_NOT_FOUND"
    assert schema.drop_reason_name(181) == "POLICY_DENY"
    assert schema.drop_reason_name(7) == "DROP_REASON_UNKNOWN"
    assert len([c for c in schema.DROP_REASONS if 130 <= c <= 200]) >= 65


def test_validate_checks_fixed_categories_and_dtypes(frame):
    schema.validate_flows(frame)
    wrong = frame.copy()
    wrong["verdict"] = wrong.verdict.cat.remove_categories(["ERROR"])
    with pytest.raises(ValidationError, match="column 'verdict'"):
        schema.validate_flows(wrong)
    wrong = frame.copy()
    wrong["time"] = wrong.time.dt.tz_localize(None)
    with pytest.raises(ValidationError, match="column 'time'"):
        schema.validate_flows(wrong)
    with pytest.raises(ValidationError, match="columns differ"):
        schema.validate_flows(frame[list(reversed(schema.COLUMNS))])
