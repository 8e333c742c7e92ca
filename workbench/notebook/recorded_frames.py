"""Record mode's side of users' eBPF programs: each read a tutorial makes is written to the recording.

``record_program``, ``record_map`` and ``record_programs`` are called by the live views (a program,
a map's ``to_frame()``, ``%ebpf programs``); in any other mode they do nothing. The frames travel as
Arrow IPC streams with pandas' metadata (column names, dtypes and index come back as they were), or as
pandas' JSON table when Arrow cannot hold them. Replay mode's side: :mod:`.replayed_programs`.
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from workbench.replay.session import Replayer, ReplayModeError, session

DETACH_MESSAGE = "replay mode: no program was attached (the %%ebpf cells were not compiled), so none is detached"


def frame_to_ipc(frame: pd.DataFrame) -> bytes:
    """``frame`` as an Arrow IPC stream (pandas' metadata in its schema)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def frame_from_ipc(payload: bytes) -> pd.DataFrame:
    """The frame :func:`frame_to_ipc` wrote (compressed or not)."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all().to_pandas()


def _record_frame(entry: dict[str, Any], frame: pd.DataFrame) -> None:
    import pyarrow as pa

    try:
        payload: bytes | None = frame_to_ipc(frame)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        payload, entry = None, {**entry, "frame": frame.to_json(orient="table")}
    session().record(entry, "", payload)


def _recorded_frame(entry: dict[str, Any], payload: bytes | None) -> pd.DataFrame:
    if payload is not None:
        return frame_from_ipc(payload)
    return pd.read_json(io.StringIO(str(entry.get("frame") or "")), orient="table")


def _recording() -> bool:
    return session().mode == "record"


def _replayer() -> Replayer:
    current = session()
    if current.replayer is None:
        raise ReplayModeError("no recording is being replayed")
    return current.replayer


# -- record mode -------------------------------------------------------------------------------
def record_program(program: Any) -> None:
    """In record mode, what ``wb.program(NAME)`` returned (a :class:`~workbench.notebook.programs.Program`)."""
    if not _recording():
        return
    session().record({"kind": "program", "name": program.name, "prog_id": int(program.prog_id),
                      "type": program.kind, "direction": program.direction, "function": program.function,
                      "target": program.target, "pinned": bool(program.pinned),
                      "maps": {name: view.map_type for name, view in program.maps.items()}}, "")


def record_map(program: str, map_name: str, percpu: str, frame: pd.DataFrame) -> None:
    """In record mode, one ``to_frame()`` of a map of ``program``."""
    if _recording() and program:
        _record_frame({"kind": "map", "program": program, "map": map_name, "percpu": percpu}, frame)


def record_programs(frame: pd.DataFrame) -> None:
    """In record mode, the frame ``%ebpf programs`` showed."""
    if _recording():
        _record_frame({"kind": "programs"}, frame)


# -- replay mode -------------------------------------------------------------------------------
