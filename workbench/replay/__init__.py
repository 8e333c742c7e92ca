"""Replay mode: the lab served from a recording made on a real lab node (docs/replay.md).

- :mod:`.recording`: the recording's format, its writer (record mode) and reader;
- :mod:`.session`: this process's mode (live, record, replay) and the replayer that answers the client's calls;
- :mod:`.fallbacks`: answers computed from the recording when no recorded call matches (flows with any filter).
"""
