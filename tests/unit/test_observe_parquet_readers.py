"""An exported flows parquet file is plain parquet: pandas.read_parquet, DuckDB and Polars read it with the
same rows and column names, and wb.read_flows still gives the exact flow dtypes."""

import duckdb
import pandas as pd
import polars as pl
import pytest

import workbench as wb
from workbench.observe import schema, synthetic
from workbench.observe.archive import ContinuousArchiver, export_parquet
from workbench.observe.store import FlowStore
from workbench.observe.synthetic import DEATHSTAR, XWING


@pytest.fixture
def exported(tmp_path):
    store = FlowStore(context=synthetic.star_wars_context())
    store.ingest(synthetic.random_events(300, seed=11))
    store.add_l7(src_ip=XWING.ipv4, dst_ip=DEATHSTAR.ipv4, src_port=41300, dst_port=80, http_method="GET",
                 http_url="http://deathstar/v1/", http_code=200, l7_latency_ns=1_000, is_reply=True)
    store.record_lost(3)
    frame = store.frame()
    path = export_parquet(frame, tmp_path / "flows.parquet")
    return frame, path


def test_pandas_reads_the_rows_and_columns(exported):
    frame, path = exported
    plain = pd.read_parquet(path)
    assert list(plain.columns) == schema.COLUMNS and len(plain) == len(frame)
    assert (plain.time == frame.time).all()
    assert plain.verdict.astype(str).tolist() == frame.verdict.astype(str).tolist()
    assert [list(x) for x in plain.src_labels] == [list(x) for x in frame.src_labels]
    assert plain.http_code.dropna().tolist() == [200]


def test_duckdb_reads_the_rows_and_columns(exported):
    frame, path = exported
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{path}')")
    assert relation.columns == schema.COLUMNS
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0] == len(frame)
    by_verdict = dict(duckdb.sql(f"SELECT verdict, count(*) FROM read_parquet('{path}') GROUP BY verdict").fetchall())
    assert by_verdict == frame.verdict.astype(str).value_counts().to_dict()
    labels = duckdb.sql(f"SELECT src_labels FROM read_parquet('{path}') LIMIT 1").fetchall()[0][0]
    assert labels == list(frame.src_labels.iloc[0])


def test_polars_reads_the_rows_and_columns(exported):
    frame, path = exported
    table = pl.read_parquet(path)
    assert table.columns == schema.COLUMNS and table.height == len(frame)
    assert table["dst_port"].to_list() == frame.dst_port.tolist()
    assert table["src_labels"].to_list() == [list(x) for x in frame.src_labels]
    assert table["time"].dtype == pl.Datetime("ns", "UTC")


def test_read_flows_keeps_the_exact_dtypes(exported):
    frame, path = exported
    back = wb.read_flows(str(path))
    pd.testing.assert_frame_equal(back, frame)
    schema.validate_flows(back)
    assert back.attrs["lost_events"] == 3


def test_archiver_files_are_readable_by_every_reader(tmp_path):
    store = FlowStore(context=synthetic.star_wars_context())
    archiver = ContinuousArchiver(store, tmp_path / "arch", flush_rows=100)
    store.ingest(synthetic.random_events(250, seed=12))
    archiver.close()
    (path,) = archiver.files
    assert len(pd.read_parquet(path)) == 250
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}')").fetchall()[0][0] == 250
    assert pl.read_parquet(path).height == 250
