"""Users' eBPF programs in record and replay mode: what a tutorial reads of them, kept for replay.

A tutorial reads three kernel-side views of the programs its ``%%ebpf`` cells attached. Record mode
writes each read as an entry of the recording; replay mode serves them again in the tutorial's order
(:meth:`~workbench.replay.session.Replayer.view`), with no kernel and no BCC:

- ``program``: ``wb.program(NAME)``: ``name``, ``prog_id``, ``type``, ``function``, ``target``,
  ``pinned`` and ``maps`` (map name -> BCC map type);
- ``map``: a map's ``to_frame()``: ``program``, ``map``, ``percpu``; the frame is the payload;
- ``programs``: the frame of ``%ebpf programs`` (the payload).

Frames travel as Arrow IPC streams with pandas' metadata, so column names, dtypes and the index
come back as they were; a frame Arrow cannot hold (mixed Python objects in a column) is kept as
pandas' JSON table instead (``frame`` in the entry).

Example (replay mode)::

    counter = wb.program("count_packets")       # a ReplayedProgramView
    counter.maps["counts"].to_frame()            # the frame the tutorial read at this point
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from workbench.notebook.mapview import Maps, MapView
from workbench.notebook.recorded_frames import (
    DETACH_MESSAGE,
    _recorded_frame,
    _replayer,
    frame_from_ipc,
    frame_to_ipc,
    record_map,
    record_program,
    record_programs,
)


class ReplayedMapView(MapView):
    """A map of a replayed program: ``to_frame()`` gives the frames the tutorial read, in order."""

    def __init__(self, program: str, name: str, map_type: str) -> None:
        super().__init__(name, None, program=program)
        self._map_type = map_type

    @property
    def map_type(self) -> str:
        return self._map_type

    def __len__(self) -> int:
        # a length (a repr, a truth test) must not consume the tutorial's next frame: the latest one
        return len(self._frame(in_sequence=False))

    def to_frame(self, percpu: str = "sum") -> pd.DataFrame:
        """The map's frame recorded at this point of the tutorial (else the latest recorded)."""
        if percpu not in ("sum", "columns"):
            raise ValueError('percpu must be "sum" or "columns"')
        return self._frame(percpu=percpu)

    def _peek_frame(self, percpu: str = "sum") -> pd.DataFrame:
        return self._frame(percpu=percpu, in_sequence=False)   # a live view: the latest, out of sequence

    def _frame(self, percpu: str = "sum", in_sequence: bool = True) -> pd.DataFrame:
        entry, payload = _replayer().view(
            "map", {"program": self.program, "map": self.name, "percpu": percpu},
            f"map {self.name} of {self.program} was not recorded", in_sequence=in_sequence)
        return _recorded_frame(entry, payload)

    def __repr__(self) -> str:
        return f"ReplayedMapView({self.name!r}, {self.map_type}, program={self.program!r})"


class ReplayedProgramView:
    """What ``wb.program(NAME)`` gives in replay mode: the recorded program, its maps as recorded frames."""

    def __init__(self, entry: dict[str, Any]) -> None:
        self.name = str(entry["name"])
        self.prog_id = int(entry["prog_id"])
        self.kind = str(entry.get("type", ""))
        self.direction = str(entry.get("direction", ""))
        self.function = str(entry.get("function", ""))
        self.target = str(entry.get("target", ""))
        self.pinned = bool(entry.get("pinned", False))
        self.maps = Maps({name: ReplayedMapView(self.name, name, str(map_type))
                          for name, map_type in (entry.get("maps") or {}).items()})

    def detach(self) -> None:
        """Nothing to detach in replay mode (says so)."""
        print(DETACH_MESSAGE)

    def __repr__(self) -> str:
        return f"ReplayedProgramView({self.name!r}, {self.kind}, target={self.target!r}, prog_id={self.prog_id})"

    def _repr_html_(self) -> str:
        rows = [("name", self.name), ("type", self.kind + (f" {self.direction}" if self.direction else "")),
                ("function", self.function), ("target", self.target), ("prog id", str(self.prog_id)),
                ("maps", ", ".join(f"{n} ({v.map_type})" for n, v in self.maps.items()) or "none")]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
                       for k, v in rows)
        return (f"<div><b>eBPF program {html.escape(self.name)}</b> (recorded on a lab node)"
                f"<table>{body}</table></div>")


def replayed_program(name: str) -> ReplayedProgramView:
    """``wb.program(NAME)`` in replay mode; ReplayModeError when the recording never read it."""
    entry, _ = _replayer().view("program", {"name": name}, f"program {name} was not recorded")
    return ReplayedProgramView(entry)


def replayed_programs() -> pd.DataFrame:
    """``%ebpf programs`` in replay mode: the frame the tutorial saw at this point."""
    entry, payload = _replayer().view("programs", {}, "%ebpf programs was not recorded")
    return _recorded_frame(entry, payload)


__all__ = ["DETACH_MESSAGE", "ReplayedMapView", "ReplayedProgramView", "frame_from_ipc",
           "frame_to_ipc", "record_map", "record_program", "record_programs", "replayed_program",
           "replayed_programs"]
