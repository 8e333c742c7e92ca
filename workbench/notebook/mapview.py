"""BCC maps as pandas DataFrames, and a live view that refreshes one in place.

Decoding follows BCC's own types (no mirror structs): integers become ints,
structs become one column per field (nested fields as ``outer.inner``), char
arrays become strings, other arrays lists. Per-CPU values are summed, or kept
one column per CPU with ``percpu="columns"``.

Example::

    >>> prog.maps["counts"].to_frame()             # doctest: +SKIP
       key  value
    0    0     42
    >>> view = prog.maps["counts"].live(interval=1.0)  # doctest: +SKIP
    >>> view.stop()                                   # doctest: +SKIP
"""

from __future__ import annotations

import ctypes as ct
import html
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pandas as pd

_PERCPU_TYPES = ("PerCpuHash", "LruPerCpuHash", "PerCpuArray")
_UNREADABLE = ("PerfEventArray", "RingBuf", "ProgArray", "StackTrace", "QueueStack", "DevMap", "CpuMap",
               "XskMap", "MapInMapArray", "MapInMapHash", "CgroupArray")


def decode(value: Any, prefix: str = "") -> dict[str, Any]:
    """A ctypes value as flat columns: {prefix: scalar} or {prefix.field: scalar, ...}."""
    if isinstance(value, ct.Structure | ct.Union):
        out: dict[str, Any] = {}
        for fname, *_ in value._fields_:
            out.update(decode(getattr(value, fname), f"{prefix}.{fname}" if prefix else fname))
        return out
    return {prefix: _scalar(value)}


def _scalar(value: Any) -> Any:
    if isinstance(value, ct.Array):
        if value._type_ is ct.c_char:
            return bytes(value).split(b"\0", 1)[0].decode(errors="replace")
        return [_scalar(v) for v in value]
    if isinstance(value, ct._SimpleCData):
        value = value.value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def _sum(values: list[Any]) -> Any:
    """Element-wise sum of per-CPU values (ints or structs of ints)."""
    first = values[0]
    if isinstance(first, ct.Structure):
        total = type(first)()
        for fname, *_ in first._fields_:
            try:
                setattr(total, fname, sum(getattr(v, fname) for v in values))
            except TypeError:
                setattr(total, fname, getattr(first, fname))
        return total
    return sum(_scalar(v) for v in values)


class MapView:
    """One map of a program: ``to_frame()`` reads it now, ``live()`` keeps a view fresh.

    ``program``: the name of the program it belongs to (record mode files each read under it).
    """

    def __init__(self, name: str, table: Any, *, program: str = "") -> None:
        self.name = name
        self.table = table
        self.program = program

    @property
    def map_type(self) -> str:
        return type(self.table).__name__

    def __len__(self) -> int:
        return sum(1 for _ in self._items())

    def _items(self) -> Iterator[tuple[Any, Any]]:
        if self.map_type in _UNREADABLE:
            return iter(())
        return iter(self.table.items())

    def to_frame(self, percpu: str = "sum") -> pd.DataFrame:
        """The map's entries now, one row per key; ``percpu`` is "sum" or "columns".

        Key columns come first ("key" or the key struct's fields), then value
        columns ("value" or the leaf struct's fields; "value.cpuN" per CPU).
        A field name used by both key and value gets a "value." prefix.
        """
        frame = self._peek_frame(percpu)
        from workbench.notebook.recorded_frames import record_map

        record_map(self.program, self.name, percpu, frame)   # record mode: replay mode serves it again
        return frame

    def _peek_frame(self, percpu: str = "sum") -> pd.DataFrame:
        """The map's entries now, not recorded (a live view's refreshes are not the tutorial's reads)."""
        if percpu not in ("sum", "columns"):
            raise ValueError('percpu must be "sum" or "columns"')
        rows: list[dict[str, Any]] = []
        key_cols: list[str] = []
        is_percpu = self.map_type in _PERCPU_TYPES
        for key, leaf in self._items():
            kcols = decode(key, "" if isinstance(key, ct.Structure) else "key")
            row = dict(kcols)
            key_cols = list(kcols)
            if is_percpu and percpu == "sum":
                vcols = decode(_sum(list(leaf)), "" if isinstance(leaf[0], ct.Structure) else "value")
            elif is_percpu:
                vcols = {}
                for cpu, v in enumerate(leaf):
                    vcols.update(decode(v, f"value.cpu{cpu}"))
            else:
                vcols = decode(leaf, "" if isinstance(leaf, ct.Structure) else "value")
            for col, v in vcols.items():
                row[f"value.{col}" if col in kcols else col] = v
            rows.append(row)
        frame = pd.DataFrame(rows)
        if rows and key_cols:
            frame = frame.sort_values(key_cols, kind="stable", ignore_index=True)
        return frame

    def live(self, interval: float = 1.0, **to_frame_args: Any) -> LiveView:
        """A widget showing ``to_frame()``, refreshed in place every ``interval`` seconds until stopped."""
        return LiveView(lambda: self._peek_frame(**to_frame_args), interval=interval, title=f"map {self.name}")

    def _repr_html_(self) -> str:
        return f"<b>map {html.escape(self.name)}</b> ({self.map_type})" + self.to_frame().to_html(index=False)

    def __repr__(self) -> str:
        return f"MapView({self.name!r}, {self.map_type})"


class Maps(Mapping[str, MapView]):
    """A program's maps by name."""

    def __init__(self, views: dict[str, MapView]) -> None:
        self._views = views

    def __getitem__(self, name: str) -> MapView:
        try:
            return self._views[name]
        except KeyError:
            from workbench.errors import NotFoundError

            raise NotFoundError(f"no map {name!r}; this program has: {', '.join(self._views) or 'no maps'}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)


class LiveView:
    """An HTML widget whose table a background thread refreshes every ``interval`` seconds.

    A thread (not an asyncio task) so it refreshes while other cells run, and
    also outside a kernel; widget state updates are safe from threads.
    """

    def __init__(self, read: Callable[[], pd.DataFrame], interval: float = 1.0, title: str = "") -> None:
        import ipywidgets as widgets

        if interval <= 0:
            raise ValueError("interval must be positive")
        self.read = read
        self.interval = interval
        self.title = title
        self.refreshes = 0
        self.error: str = ""
        self.html = widgets.HTML()
        self.status = widgets.HTML()
        self.stop_button = widgets.Button(description="Stop", icon="stop")
        self.stop_button.on_click(lambda _: self.stop())
        self.widget = widgets.VBox([widgets.HBox([self.status, self.stop_button]), self.html])
        self._stop = threading.Event()
        self.refresh()
        self._thread = threading.Thread(target=self._run, name=f"workbench-live-{title}", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def refresh(self) -> None:
        """Read the map once and replace the table (also called by the timer)."""
        try:
            frame = self.read()
            self.html.value = frame.to_html(index=False) if not frame.empty else "<i>(empty)</i>"
            self.error = ""
        except Exception as err:  # a detached program's map: show why, keep the widget
            self.error = str(err).splitlines()[0] if str(err) else type(err).__name__
            self.html.value = f"<pre>{html.escape(self.error)}</pre>"
        self.refreshes += 1
        state = "stopped" if self._stop.is_set() else f"every {self.interval:g} s"
        self.status.value = f"<b>{html.escape(self.title)}</b> — refresh {self.refreshes}, {state}"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def stop(self) -> None:
        """Stop refreshing (idempotent); the last table stays visible."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=max(5.0, self.interval * 2))
        self.stop_button.disabled = True
        self.status.value = f"<b>{html.escape(self.title)}</b> — refresh {self.refreshes}, stopped"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
