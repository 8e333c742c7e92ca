"""Users' eBPF programs replayed: wb.program, its maps' frames and %ebpf programs from a small recording.

The recording is written as record mode writes it (RecordingWriter, frames as Arrow payloads), then
served by a Replayer: the tutorial's reads come back in order with their columns and dtypes, a read
outside the sequence gets the latest recorded one, and what was never recorded fails in one line.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from workbench.notebook import replayed_programs as recorded
from workbench.replay import session as replay_session
from workbench.replay.recording import FORMAT, META_FILE, Recording, RecordingWriter
from workbench.replay.session import NEEDS_A_NODE, Replayer, ReplayModeError, Session

TUTORIAL = "05-test"


def counts(icmp: int) -> pd.DataFrame:
    return pd.DataFrame({"key": pd.Series([1, 6], dtype="int64"), "value": pd.Series([icmp, 40], dtype="uint64")})


def transitions() -> pd.DataFrame:
    """A struct key (one column per field) and names with dots, as to_frame gives them."""
    return pd.DataFrame({"oldstate": [2, 1], "newstate": [1, 4], "value.cpu0": [5, 5], "value.cpu1": [0, 1]})


def attached(names: list[str]) -> pd.DataFrame:
    rows = [{"name": n, "type": "xdp", "target": "wb-x-xwing/eth0", "function": n,
             "attached_at": pd.Timestamp("2026-12-01T06:00:00", tz="UTC"), "pinned": False, "prog_id": 40 + i}
            for i, n in enumerate(names)]
    return pd.DataFrame(rows, columns=["name", "type", "target", "function", "attached_at", "pinned", "prog_id"])


def program_entry(name: str, prog_id: int, maps: dict[str, str]) -> dict[str, object]:
    return {"kind": "program", "name": name, "prog_id": prog_id, "type": "xdp", "direction": "",
            "function": name, "target": "wb-x-xwing/eth0", "pinned": False, "maps": maps}


def map_entry(program: str, name: str, percpu: str = "sum") -> dict[str, object]:
    return {"kind": "map", "program": program, "map": name, "percpu": percpu}


@pytest.fixture
def recording(tmp_path: Path) -> Recording:
    writer = RecordingWriter(tmp_path, TUTORIAL)
    writer.add(program_entry("count_packets", 11, {"counts": "Hash"}), "")
    writer.add(map_entry("count_packets", "counts"), "", recorded.frame_to_ipc(counts(5)))
    writer.add({"kind": "exec", "pod": "tiefighter", "command": ["ping", "-c", "9"], "exit_code": 1,
                "stdout": "9 packets transmitted, 0 received\n", "stderr": "", "resolved_pod": "tiefighter",
                "seconds": 0.3}, "")
    writer.add(program_entry("count_packets", 12, {"counts": "Hash"}), "")
    writer.add(map_entry("count_packets", "counts"), "", recorded.frame_to_ipc(counts(9)))
    writer.add(map_entry("tracer", "transitions", "columns"), "", recorded.frame_to_ipc(transitions()))
    writer.add({"kind": "programs"}, "", recorded.frame_to_ipc(attached(["count_packets", "icmp_guard"])))
    writer.add({"kind": "programs"}, "", recorded.frame_to_ipc(attached(["count_packets"])))
    (tmp_path / META_FILE).write_text(json.dumps({"format": FORMAT, "recorded_at": "2026-12-01T06:00:00+00:00",
                                                  "kernel": "6.18.0", "tutorials": [TUTORIAL]}))
    return Recording.load(tmp_path)


@pytest.fixture
def replaying(recording: Recording, monkeypatch: pytest.MonkeyPatch) -> Iterator[Replayer]:
    replayer = Replayer(recording, TUTORIAL)
    monkeypatch.setattr(replay_session, "_session", Session(mode="replay", replayer=replayer, tutorial=TUTORIAL))
    yield replayer


def test_program_and_map_reads_come_back_in_the_tutorials_order(replaying: Replayer):
    first = recorded.replayed_program("count_packets")
    assert first.prog_id == 11 and list(first.maps) == ["counts"] and first.maps["counts"].map_type == "Hash"
    assert first.maps["counts"].to_frame().value.tolist() == [5, 40]
    second = recorded.replayed_program("count_packets")
    assert second.prog_id == 12 != first.prog_id
    assert second.maps["counts"].to_frame().value.tolist() == [9, 40]
    # past the sequence: the latest recorded read
    assert first.maps["counts"].to_frame().value.tolist() == [9, 40]


def test_frames_keep_their_columns_and_dtypes(replaying: Replayer):
    frame = recorded.replayed_program("count_packets").maps["counts"].to_frame()
    pd.testing.assert_frame_equal(frame, counts(5))
    tracer = recorded.ReplayedMapView("tracer", "transitions", "Hash").to_frame(percpu="columns")
    pd.testing.assert_frame_equal(tracer, transitions())
    assert list(tracer.columns) == ["oldstate", "newstate", "value.cpu0", "value.cpu1"]


def test_programs_frames_come_back_in_order(replaying: Replayer):
    before = recorded.replayed_programs()
    pd.testing.assert_frame_equal(before, attached(["count_packets", "icmp_guard"]))
    assert str(before.attached_at.dtype).startswith("datetime64") and before.attached_at.dt.tz is not None
    assert list(recorded.replayed_programs().name) == ["count_packets"]


def test_what_was_not_recorded_fails_in_one_line(replaying: Replayer):
    view = recorded.replayed_program("count_packets")
    with pytest.raises(ReplayModeError) as err:
        recorded.ReplayedMapView("count_packets", "other", "Array").to_frame()
    assert str(err.value) == f"{NEEDS_A_NODE}: map other of count_packets was not recorded"
    with pytest.raises(ReplayModeError) as err:
        view.maps["counts"].to_frame(percpu="columns")        # recorded only summed
    assert str(err.value).startswith(NEEDS_A_NODE) and "\n" not in str(err.value)
    with pytest.raises(ReplayModeError, match="program nope was not recorded"):
        recorded.replayed_program("nope")
    with pytest.raises(Exception, match="no map 'other'; this program has: counts"):
        view.maps["other"]


def test_a_length_does_not_consume_the_tutorials_next_frame(replaying: Replayer):
    view = recorded.replayed_program("count_packets").maps["counts"]
    assert len(view) == 2                                    # the latest recorded frame
    assert view.to_frame().value.tolist() == [5, 40]         # the sequence is where it was


def test_a_background_command_keeps_the_sequence_and_lasts_its_recorded_time(replaying: Replayer):
    first = recorded.replayed_program("count_packets")
    outcome: dict[str, object] = {}
    started = time.monotonic()
    worker = threading.Thread(target=lambda: outcome.update(
        result=replaying.exec("lab", "tiefighter", ["ping", "-c", "9"])))
    worker.start()
    worker.join(timeout=0.1)
    # the main thread goes on with the reads recorded before the command ended
    assert first.maps["counts"].to_frame().value.tolist() == [5, 40]
    assert worker.is_alive()
    worker.join()
    assert time.monotonic() - started >= 0.3
    assert outcome["result"]["exit_code"] == 1                # type: ignore[index]
    assert recorded.replayed_program("count_packets").prog_id == 12


def test_frames_arrow_cannot_hold_go_as_a_json_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    writer = RecordingWriter(tmp_path, TUTORIAL)
    monkeypatch.setattr(replay_session, "_session", Session(mode="record", writer=writer, tutorial=TUTORIAL))
    mixed = pd.DataFrame({"key": [1, 2], "value": [b"\x01", 3.5]})
    recorded.record_map("p", "m", "sum", mixed)
    recorded.record_programs(attached(["p"]))
    lines = [json.loads(line) for line in writer.path.read_text().splitlines()]
    assert lines[0]["kind"] == "map" and "frame" in lines[0] and lines[0].get("payload") is None
    assert lines[1]["kind"] == "programs" and lines[1]["payload"].endswith(".arrow")
    (tmp_path / META_FILE).write_text(json.dumps({"format": FORMAT, "tutorials": [TUTORIAL]}))
    replayer = Replayer(Recording.load(tmp_path), TUTORIAL)
    monkeypatch.setattr(replay_session, "_session", Session(mode="replay", replayer=replayer, tutorial=TUTORIAL))
    back = recorded.ReplayedMapView("p", "m", "Hash").to_frame()
    assert list(back.columns) == ["key", "value"] and back.key.tolist() == [1, 2]
