"""The recorded flows played back in time, for the live dashboard in replay mode.

``Playback(frame)`` is a ``fetch(after_seq)`` function (what the dashboard polls): the flows become
visible as their recorded times come round again, measured from the first poll, so the dashboard
moves as it did on the lab node. Quiet stretches longer than ``max_gap`` seconds are shortened to it,
so a recording with pauses between a tutorial's cells does not leave the dashboard idle.

Example::

    >>> import pandas as pd
    >>> from workbench.observe.schema import empty_flows
    >>> play = Playback(empty_flows(), clock=lambda: 0.0)
    >>> len(play(None)), play(None).attrs["seq"]
    (0, 0)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pandas as pd


class Playback:
    """See the module docstring; ``speed`` 2.0 plays twice as fast."""

    def __init__(self, frame: pd.DataFrame, speed: float = 1.0, max_gap: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rows = frame.sort_values("time", kind="stable").reset_index(drop=True)
        seconds = (self.rows.time - self.rows.time.iloc[0]).dt.total_seconds().to_numpy() \
            if len(self.rows) else np.zeros(0)
        gaps = np.minimum(np.diff(seconds, prepend=seconds[:1]), max_gap)
        self.offsets = np.cumsum(gaps) / speed       # when each row appears, seconds after the first poll
        self.clock = clock
        self.started: float | None = None

    def visible(self) -> int:
        """How many rows have been played so far."""
        if self.started is None:
            self.started = self.clock()
        elapsed = self.clock() - self.started
        return int(np.searchsorted(self.offsets, elapsed, side="right"))

    def __call__(self, after: int | None) -> pd.DataFrame:
        shown = self.visible()
        rows = self.rows.iloc[(after or 0):shown]
        rows.attrs = {"seq": shown, "lost_events": 0}
        return rows
