"""The live flow dashboard (``lab.observe()``): ipywidgets + plotly FigureWidgets updated in place.

Figures are built once; every refresh mutates their traces inside
``batch_update()`` (one message per figure), never re-creates them.
Aggregates are updated incrementally from the flows that arrived since the
last refresh; changing a filter recomputes them from the kept window.

``refresh()`` does one step synchronously (tests call it directly);
``start()`` runs it every ``interval`` seconds in a daemon thread.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from workbench.errors import SetupError
from workbench.observe import schema
from workbench.observe.servicemap import VERDICT_COLORS

ALL = "(all)"
Fetch = Callable[[int | None], pd.DataFrame]


def _widgets() -> tuple[Any, Any]:
    import ipywidgets as widgets
    import plotly.graph_objects as go

    try:
        go.FigureWidget()
    except Exception as err:  # plotly >= 6 needs anywidget for FigureWidget
        raise SetupError(f"plotly FigureWidget is unavailable: {err}", hint="pip install anywidget") from err
    return widgets, go


def fetcher(source: Any) -> Fetch:
    """A function ``fetch(after_seq) -> new flows`` for a store, a Lab-like object, a frame or a callable."""
    if callable(source) and not hasattr(source, "frame"):
        return source
    if hasattr(source, "frame"):
        return lambda after: source.frame(after=after)
    if isinstance(source, pd.DataFrame):
        frame = source

        def once(after: int | None) -> pd.DataFrame:
            out = frame if after is None else frame.iloc[0:0]
            out.attrs["seq"] = len(frame)
            return out
        return once
    raise TypeError(f"cannot observe {type(source).__name__}: give a FlowStore, a DataFrame or a fetch function")


def _talker(frame: pd.DataFrame, side: str) -> pd.Series:
    pod = frame[f"{side}_pod"].astype("object")
    ip = frame[f"{side}_ip"].astype("object")
    return pod.where(pod.notna(), ip).fillna("?")


NO_DROPS_NOTE = {"text": "no drops", "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                 "font": {"size": 16, "color": "#888"}}


class FlowDashboard:
    """Flows/s by verdict, drops by reason, top talkers, latest flows; filter by verdict and pod; pause.

    Example::

        >>> dash = FlowDashboard(store)   # doctest: +SKIP
        >>> dash.widget                   # doctest: +SKIP
        >>> dash.start()                  # doctest: +SKIP
    """

    def __init__(self, source: Any, *, window_seconds: int = 60, top_n: int = 10, table_rows: int = 15,
                 max_rows: int = 1_000_000) -> None:
        widgets, go = _widgets()
        self._fetch = fetcher(source)
        self.window_seconds, self.top_n, self.table_rows, self.max_rows = window_seconds, top_n, table_rows, max_rows
        self.seq: int | None = None
        self.lost_events = 0
        self.archive: dict[str, Any] | None = None   # {"dropped", "error"} of the lab's archive, if it has one
        self.chunks: list[pd.DataFrame] = []   # the flows of the window, in arrival batches
        self.paused = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reset_aggregates()

        self.rate = go.FigureWidget(layout={"title": "flows/s by verdict", "height": 300,
                                            "margin": {"l": 40, "r": 10, "t": 40, "b": 30}})
        for verdict in schema.VERDICTS:
            self.rate.add_scatter(x=[], y=[], mode="lines", name=verdict, line={"color": VERDICT_COLORS[verdict]})
        self.drops = go.FigureWidget(layout={"title": "drops by reason", "height": 300,
                                             "margin": {"l": 40, "r": 10, "t": 40, "b": 80}})
        self.drops.add_bar(x=[], y=[], marker={"color": VERDICT_COLORS["DROPPED"]}, name="drops")
        self.talkers = go.FigureWidget(layout={"title": "top talkers", "height": 320,
                                               "margin": {"l": 200, "r": 10, "t": 40, "b": 30}})
        self.talkers.add_bar(x=[], y=[], orientation="h", name="flows")
        self.table = widgets.HTML(value="")
        self.status = widgets.HTML(value="")
        self.archive_status = widgets.HTML(value="")   # empty (invisible) while the archive is fine
        self.verdict_filter = widgets.Dropdown(options=[ALL, *schema.VERDICTS], value=ALL, description="verdict")
        self.pod_filter = widgets.Dropdown(options=[ALL], value=ALL, description="pod")
        self.pause_button = widgets.ToggleButton(value=False, description="pause", icon="pause")
        self.verdict_filter.observe(lambda _change: self._on_filter(), names="value")
        self.pod_filter.observe(lambda _change: self._on_filter(), names="value")
        self.pause_button.observe(self._on_pause, names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.verdict_filter, self.pod_filter, self.pause_button, self.status]),
            self.archive_status,
            widgets.HBox([self.rate, self.drops]),
            self.talkers,
            self.table,
        ])
        self.widget.add_class("wb-dashboard")  # a stable hook for the browser test and user CSS

    # -- notebook display --------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- aggregates ----------------------------------------------------------------------------
    def _reset_aggregates(self) -> None:
        self.per_second = pd.DataFrame(0, index=pd.DatetimeIndex([], tz="UTC"), columns=schema.VERDICTS)
        self.drop_counts: pd.Series = pd.Series(dtype="int64")
        self.talker_counts: pd.Series = pd.Series(dtype="int64")
        self.total = 0

    def _selected(self, frame: pd.DataFrame) -> pd.DataFrame:
        mask = np.ones(len(frame), bool)
        verdict = self.verdict_filter.value if hasattr(self, "verdict_filter") else ALL
        pod = self.pod_filter.value if hasattr(self, "pod_filter") else ALL
        if verdict != ALL:
            mask &= (frame.verdict == verdict).to_numpy(bool)
        if pod != ALL:
            mask &= ((frame.src_pod == pod) | (frame.dst_pod == pod)).to_numpy(bool)
        return frame[mask]

    def _accumulate(self, new: pd.DataFrame) -> None:
        if new.empty:
            return
        self.total += len(new)
        seconds = new.time.dt.floor("s")
        counts = pd.crosstab(seconds, new.verdict.astype("object")).reindex(columns=schema.VERDICTS, fill_value=0)
        self.per_second = self.per_second.add(counts, fill_value=0).astype("int64")
        drops = new[new.event_type == "drop"]
        if len(drops):
            self.drop_counts = self.drop_counts.add(drops.drop_reason_desc.astype("object").value_counts(),
                                                    fill_value=0).astype("int64")
        pairs = _talker(new, "src") + " → " + _talker(new, "dst")
        self.talker_counts = self.talker_counts.add(pairs.value_counts(), fill_value=0).astype("int64")

    def _trim(self) -> None:
        """Drop whole batches older than the window (or beyond max_rows); no per-refresh copy of the window."""
        if not self.chunks:
            return
        newest = self.chunks[-1].time.iloc[-1]
        cutoff = newest - pd.Timedelta(seconds=self.window_seconds)
        while len(self.chunks) > 1 and (self.chunks[0].time.iloc[-1] < cutoff
                                        or sum(len(c) for c in self.chunks) > self.max_rows):
            self.chunks.pop(0)
        self.per_second = self.per_second[self.per_second.index >= cutoff.floor("s")]

    @property
    def buffer(self) -> pd.DataFrame:
        """The flows of the window as one frame."""
        if not self.chunks:
            return schema.empty_flows()
        if len(self.chunks) == 1:
            return self.chunks[0]
        return pd.concat([c.astype({col: "object" for col in schema.DYNAMIC_CATEGORICALS}) for c in self.chunks],
                         ignore_index=True)

    def _latest(self, rows: int) -> pd.DataFrame:
        picked: list[pd.DataFrame] = []
        count = 0
        for chunk in reversed(self.chunks):
            sel = self._selected(chunk)
            if len(sel):
                picked.insert(0, sel.tail(rows - count))
                count += len(picked[0])
            if count >= rows:
                break
        if not picked:
            return schema.empty_flows()
        return pd.concat([p.astype({c: "object" for c in schema.DYNAMIC_CATEGORICALS}) for p in picked],
                         ignore_index=True)

    # -- events ------------------------------------------------------------------------------------
    def _on_filter(self) -> None:
        with self._lock:
            self._reset_aggregates()
            self._accumulate(self._selected(self.buffer))
            self._draw()

    def _on_pause(self, change: dict[str, Any]) -> None:
        self.paused = bool(change["new"])
        self.pause_button.description = "resume" if self.paused else "pause"
        self.pause_button.icon = "play" if self.paused else "pause"
        if not self.paused:
            with self._lock:
                self._draw()

    def refresh(self) -> int:
        """Fetch new flows, update aggregates and (unless paused) the figures; returns the new rows."""
        new = self._fetch(self.seq)
        with self._lock:
            self.seq = int(new.attrs.get("seq", (self.seq or 0) + len(new)))
            self.lost_events = int(new.attrs.get("lost_events", self.lost_events))
            if isinstance(new.attrs.get("archive"), dict):
                self.archive = dict(new.attrs["archive"])
                self.archive_status.value = archive_line(self.archive)   # also while paused
            if len(new):
                self.chunks.append(new)
                self._accumulate(self._selected(new))
                self._trim()
                pods = sorted({p for p in pd.concat([new.src_pod, new.dst_pod]).dropna().astype(str)}
                              | set(self.pod_filter.options) - {ALL})
                if [ALL, *pods] != list(self.pod_filter.options):
                    self.pod_filter.options = [ALL, *pods]
            if not self.paused:
                self._draw()
        return len(new)

    def _draw(self) -> None:
        per_second = self.per_second.sort_index()
        with self.rate.batch_update():
            for trace, verdict in zip(self.rate.data, schema.VERDICTS, strict=True):
                trace.x = list(per_second.index)
                trace.y = per_second[verdict].tolist() if len(per_second) else []
        drops = self.drop_counts.sort_values(ascending=False)
        with self.drops.batch_update():
            self.drops.data[0].x = drops.index.tolist()
            self.drops.data[0].y = drops.tolist()
            # An empty bar chart reads as broken; say that there is nothing to show.
            self.drops.layout.annotations = () if len(drops) else (NO_DROPS_NOTE,)
        top = self.talker_counts.sort_values(ascending=False).head(self.top_n)[::-1]
        with self.talkers.batch_update():
            self.talkers.data[0].y = top.index.tolist()
            self.talkers.data[0].x = top.tolist()
        self.table.value = _html_table(self._latest(self.table_rows))
        rate = per_second.sum(axis=1).iloc[-1] if len(per_second) else 0
        self.status.value = (f"<b>{self.total}</b> flows shown, {rate} in the last second, "
                             f"lost events: <b>{self.lost_events}</b>" + (" — <i>paused</i>" if self.paused else ""))

    # -- live ------------------------------------------------------------------------------------
    def start(self, interval: float = 1.0) -> None:
        """Refresh every ``interval`` seconds in a daemon thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception as err:  # keep the dashboard alive; say what went wrong
                    self.status.value = f"refresh failed: {html.escape(str(err))}"

        self._thread = threading.Thread(target=loop, name="flow-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def archive_line(archive: dict[str, Any] | None) -> str:
    """The dashboard's archive line: empty while the archive keeps every row, else its error and drops.

    Example::

        >>> archive_line({"dropped": 0, "error": None})
        ''
        >>> "1200 rows dropped" in archive_line({"dropped": 1200, "error": "archive: No space left on device"})
        True
    """
    if not archive:
        return ""
    dropped, error = int(archive.get("dropped") or 0), archive.get("error")
    if not dropped and not error:
        return ""
    text = f"archive: {dropped} rows dropped" if not error else f"{error} — {dropped} rows dropped"
    return f'<span class="wb-archive-status" style="color:#c0392b"><b>{html.escape(text)}</b></span>'


def _html_table(frame: pd.DataFrame) -> str:
    columns = ["time", "verdict", "event_type", "src_pod", "src_ip", "dst_pod", "dst_ip", "dst_port", "protocol",
               "drop_reason_desc", "summary"]
    head = "".join(f"<th>{c}</th>" for c in columns)
    rows = []
    for row in frame[columns].itertuples(index=False):
        cells = []
        for name, value in zip(columns, row, strict=True):
            text = "" if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA else \
                (value.strftime("%H:%M:%S.%f")[:-3] if name == "time" else str(value))
            style = f' style="color:{VERDICT_COLORS.get(text, "inherit")}"' if name == "verdict" else ""
            cells.append(f"<td{style}>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="wb-flows"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def observe_dashboard(source: Any, *, start: bool = False, interval: float = 1.0, **options: Any) -> FlowDashboard:
    """Build the dashboard for a FlowStore, a DataFrame, or a ``fetch(after_seq)`` function.

    Example::

        >>> dash = observe_dashboard(store, start=True)   # doctest: +SKIP
    """
    dash = FlowDashboard(source, **options)
    dash.refresh()
    if start:
        dash.start(interval)
    return dash
