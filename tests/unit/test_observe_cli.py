"""`workbench observe` / `flows export` on archives: formats, filters, errors, the magic's DataFrame."""

import subprocess
import sys

import pandas as pd
import pytest

from workbench.cli.commands import run
from workbench.observe import render, synthetic
from workbench.observe.archive import export_parquet, load_parquet
from workbench.observe.store import FlowStore
from workbench.observe.synthetic import DEATHSTAR, XWING


@pytest.fixture
def archive(tmp_path):
    s = FlowStore(context=synthetic.star_wars_context())
    s.ingest(synthetic.random_events(200, seed=7))
    s.ingest(synthetic.events([dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, sport=41234, type="drop",
                                    verdict="DROPPED", drop_reason=133, src_identity=258, dst_identity=257)]))
    s.record_lost(3)
    frame = s.frame()
    frame.attrs.pop("seq")
    path = export_parquet(frame, tmp_path / "flows.parquet")
    return path, frame


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "workbench", *argv], capture_output=True, text=True)


def test_default_is_the_last_20_compact_lines(archive):
    path, frame = archive
    proc = cli("observe", "--input-file", str(path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "EVENTS LOST: 3" and len(lines) == 21
    assert lines[-1].endswith("POLICY_DENIED DROPPED (TCP Flags: SYN)")
    assert "default/xwing:41234 (ID:258) -> default/deathstar-6c94dcc57b-6chpk:80 (ID:257)" in lines[-1]


def test_json_output_round_trips_to_the_same_rows(archive):
    path, frame = archive
    proc = cli("observe", "--input-file", str(path), "--all", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    back = render.read_json_lines(proc.stdout)
    pd.testing.assert_frame_equal(back, frame)
    assert back.attrs["lost_events"] == 3


def test_filters_as_flags(archive):
    path, frame = archive
    _, result = run(["observe", "--input-file", str(path), "--verdict", "DROPPED", "--type", "drop",
                     "--from-pod", "xwing", "--to-label", "class=deathstar", "--port", "80", "--all"])
    got = result.value()
    expected = frame[(frame.verdict == "DROPPED") & (frame.event_type == "drop") & (frame.src_pod == "xwing")
                     & (frame.dst_pod == DEATHSTAR.pod) & ((frame.src_port == 80) | (frame.dst_port == 80))]
    assert len(got) == len(expected) >= 1
    assert got.src_port.tolist() == expected.src_port.tolist()


def test_table_output(archive):
    path, _ = archive
    proc = cli("observe", "--input-file", str(path), "--last", "3", "-o", "table")
    lines = proc.stdout.splitlines()
    assert lines[1].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(lines) == 5


def test_unknown_values_exit_1_with_one_line(archive):
    path, _ = archive
    proc = cli("observe", "--input-file", str(path), "--verdict", "DENIED")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: unknown verdict 'DENIED' "
                                   "(valid: FORWARDED, DROPPED, AUDIT, REDIRECTED, ERROR)")
    proc = cli("observe", "--input-file", str(path), "--from-pod", "x-wing")
    assert proc.returncode == 1 and "pods: default/deathstar-6c94dcc57b-6chpk" in proc.stderr


def test_corrupt_input_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    proc = cli("observe", "--input-file", str(bad))
    assert proc.returncode == 1 and "not a readable parquet file" in proc.stderr and "Traceback" not in proc.stderr


def test_follow_needs_a_live_lab(archive):
    path, _ = archive
    proc = cli("observe", "--input-file", str(path), "--follow")
    assert proc.returncode == 1 and "--follow" in proc.stderr


def test_flows_export_from_an_archive_with_filters(archive, tmp_path):
    path, frame = archive
    out = tmp_path / "drops.parquet"
    proc = cli("flows", "export", str(out), "--input-file", str(path), "--verdict", "DROPPED")
    assert proc.returncode == 0, proc.stderr
    back = load_parquet(out)
    assert len(back) == int((frame.verdict == "DROPPED").sum()) and set(back.verdict) == {"DROPPED"}
