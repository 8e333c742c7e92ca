"""The live view's refresh loop, without a kernel: any callable that returns a DataFrame."""

import time

import pandas as pd

from workbench.notebook.mapview import LiveView


def test_live_view_refreshes_in_place_shows_errors_and_stops():
    ticks = {"n": 0}

    def read() -> pd.DataFrame:
        ticks["n"] += 1
        if ticks["n"] == 3:
            raise KeyError("map gone")
        return pd.DataFrame({"key": [0], "value": [ticks["n"]]})

    view = LiveView(read, interval=0.05, title="map counts")
    widget_before = view.html
    deadline = time.time() + 5
    while view.refreshes < 5 and time.time() < deadline:
        time.sleep(0.02)
    view.stop()
    assert view.refreshes >= 5 and view.html is widget_before          # same widget, new content
    assert "<table" in view.html.value and not view.running and view.stop_button.disabled
    assert "stopped" in view.status.value
    frozen = view.refreshes
    time.sleep(0.2)
    assert view.refreshes == frozen
    view.stop()                                                        # idempotent


def test_a_failing_read_is_shown_not_raised():
    def read() -> pd.DataFrame:
        raise OSError("Bad file descriptor")

    view = LiveView(read, interval=10)
    view.stop()
    assert view.error == "Bad file descriptor" and "Bad file descriptor" in view.html.value
