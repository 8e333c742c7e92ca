"""The replay engine on a small recording written here (the shipped one has its own test).

A recording is written the way record mode writes it (RecordingWriter, with the lab's name scrubbed),
then served to a lab of another name: the tutorial's sequence, the nearest recorded answer outside
it, flows filtered from what was recorded, exports written where this run asks, and one-line errors
for what needs a kernel.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from workbench.observe import ipc, synthetic
from workbench.observe.store import FlowStore
from workbench.replay.recording import FORMAT, LAB_PLACEHOLDER, META_FILE, Recording, RecordingWriter
from workbench.replay.session import NEEDS_A_NODE, Replayer, ReplayModeError

RECORDED_LAB = "tutorialx1a2b3c"


def recorded_flows() -> pd.DataFrame:
    store = FlowStore(1000, synthetic.star_wars_context())
    store.ingest(synthetic.random_events(200, seed=7))
    frame = store.frame()
    frame.attrs = {}
    return frame


@pytest.fixture
def recording(tmp_path: Path) -> Recording:
    writer = RecordingWriter(tmp_path, "09-test")
    frame = recorded_flows()
    writer.add({"kind": "up", "result": {"already_up": False, "status": {"lab": RECORDED_LAB}}}, RECORDED_LAB)
    writer.add({"kind": "call", "method": "endpoint.list", "params": {}, "result": [{"pod": "xwing"}]}, RECORDED_LAB)
    writer.add({"kind": "exec", "pod": "xwing", "command": ["curl", "-s", "deathstar"], "exit_code": 0,
                "stdout": "Ship landed\n", "stderr": "", "resolved_pod": "xwing"}, RECORDED_LAB)
    writer.add({"kind": "call", "method": "flows.query", "params": {"filters": {"since": "2026-01-01T00:00:00"},
                                                                    "after": None},
                "result": {"seq": 200, "lost_events": 0}}, RECORDED_LAB, ipc.to_ipc(frame))
    writer.add({"kind": "call", "method": "policy.apply", "params": {"text": "kind: X", "source": "", "dry_run": False,
                                                                     "audit": False},
                "result": {"applied": ["default/rule1"]}}, RECORDED_LAB)
    writer.add({"kind": "call", "method": "endpoint.list", "params": {},
                "result": [{"pod": "xwing", "lab": RECORDED_LAB}]}, RECORDED_LAB)
    writer.add({"kind": "call", "method": "flows.export", "params": {"path": "/elsewhere/f.parquet", "filters": {}},
                "result": {"path": "/elsewhere/f.parquet", "rows": len(frame)}}, RECORDED_LAB, ipc.to_ipc(frame))
    (tmp_path / META_FILE).write_text(json.dumps({"format": FORMAT, "recorded_at": "2026-12-01T06:00:00+00:00",
                                                  "kernel": "6.18.0", "tutorials": ["09-test"]}))
    return Recording.load(tmp_path)


def test_the_lab_name_is_scrubbed_on_disk_and_given_back_as_the_replaying_lab(recording: Recording):
    raw = (recording.directory / "09-test.jsonl").read_text()
    assert RECORDED_LAB not in raw and LAB_PLACEHOLDER in raw
    replayer = Replayer(recording, "09-test")
    replayer.call("mine", "endpoint.list", {})
    replayer.call("mine", "policy.apply", {"text": "kind: X", "source": "", "dry_run": False, "audit": False})
    result, _ = replayer.call("mine", "endpoint.list", {})
    assert result == [{"pod": "xwing", "lab": "mine"}]


def test_the_tutorials_sequence_is_served_in_order(recording: Recording):
    replayer = Replayer(recording, "09-test")
    assert replayer.call("mine", "endpoint.list", {})[0] == [{"pod": "xwing"}]
    assert replayer.exec("mine", "xwing", ["curl", "-s", "deathstar"])["stdout"] == "Ship landed\n"
    # a flow query whose time filter differs from the recorded run's: the recorded answer at this point
    meta, payload = replayer.call("mine", "flows.query", {"filters": {"since": "2030-05-05T00:00:00"}, "after": None})
    assert meta["seq"] == 200 and payload is not None and len(ipc.from_ipc(payload)) == 200


def test_a_command_that_was_not_recorded_fails_in_one_line(recording: Recording):
    replayer = Replayer(recording, "09-test")
    with pytest.raises(ReplayModeError) as err:
        replayer.exec("mine", "xwing", ["rm", "-rf", "/"])
    assert str(err.value).startswith(NEEDS_A_NODE) and "\n" not in str(err.value)


def test_flows_with_unrecorded_filters_are_filtered_from_the_recorded_flows(recording: Recording):
    replayer = Replayer(recording, None)
    expected = recorded_flows()
    _, payload = replayer.call("mine", "flows.query", {"filters": {"verdict": "DROPPED"}, "after": None})
    assert payload is not None
    got = ipc.from_ipc(payload)
    assert len(got) == (expected.verdict == "DROPPED").sum() > 0 and set(got.verdict) == {"DROPPED"}


def test_an_export_is_written_where_this_run_asks(recording: Recording, tmp_path: Path):
    replayer = Replayer(recording, "09-test")
    target = tmp_path / "out" / "flows.parquet"
    result, _ = replayer.call("mine", "flows.export", {"path": str(target), "filters": {}})
    assert result == {"path": str(target), "rows": 200} and len(pd.read_parquet(target)) == 200


def test_applying_an_unrecorded_policy_needs_a_node_and_a_recorded_one_switches_stage(recording: Recording):
    replayer = Replayer(recording, None)
    with pytest.raises(ReplayModeError, match="applying a policy that was not recorded"):
        replayer.call("mine", "policy.apply", {"text": "kind: Y", "source": "", "dry_run": False, "audit": False})
    with pytest.warns(UserWarning, match="switched to the recorded stage"):
        result, _ = replayer.call("mine", "policy.apply", {"text": "kind: X", "source": "", "dry_run": False,
                                                           "audit": False})
    assert result == {"applied": ["default/rule1"]}
    assert replayer.tutorial == "09-test"
    assert replayer.call("mine", "endpoint.list", {})[0] == [{"pod": "xwing", "lab": "mine"}]   # after the apply


def test_the_banner_names_date_and_kernel(recording: Recording):
    assert recording.banner == "Replay of a lab recorded on 2026-12-01, kernel 6.18.0"
