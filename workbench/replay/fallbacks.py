"""Answers the replay computes from the recording when no recorded call matches (pure code, no kernel).

- ``flows.query`` with filters nobody recorded: the flows recorded so far in the replayed sequence
  (every recorded flow answer up to the cursor, without duplicates; the whole recording outside a
  tutorial), filtered by :func:`workbench.observe.filters.flows`, the agent's own filter code;
- ``agent.ping``: the replayed lab always answers.

Everything else that was not recorded is a :class:`~workbench.replay.session.ReplayModeError`.
"""

from __future__ import annotations

from typing import Any, Protocol

import pandas as pd

from workbench.replay.recording import Recording


class RecordedSequence(Protocol):
    """What the fallbacks read of a replayer (workbench.replay.session.Replayer)."""

    recording: Recording
    tutorial: str | None
    cursor: int

    @property
    def entries(self) -> list[dict[str, Any]]: ...


def recorded_flows(replayer: RecordedSequence) -> pd.DataFrame:
    """Every flow the recording has seen up to the replay's position, oldest first, each once."""
    from workbench.observe import ipc
    from workbench.observe.schema import empty_flows

    if replayer.tutorial:
        entries = replayer.entries[:replayer.cursor] or replayer.entries
    else:
        entries = [entry for _, entry in replayer.recording.entries()]
    frames = [ipc.from_ipc(replayer.recording.payload(e["payload"]))
              for e in entries if e.get("kind") == "call" and e.get("method") == "flows.query" and e.get("payload")]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_flows()
    merged = pd.concat(frames, ignore_index=True)
    key = merged[["time", "src_ip", "dst_ip", "src_port", "dst_port", "event_type", "verdict", "is_reply"]].astype(str)
    merged = merged[~key.duplicated()].sort_values("time", kind="stable").reset_index(drop=True)
    return merged


def computed_answer(replayer: RecordedSequence, lab: str, method: str, params: dict[str, Any]) -> tuple[Any, bytes | None] | None:
    """(result, payload) for ``method`` computed from the recording, or None when it cannot be."""
    if method == "agent.ping":
        return {"lab": lab, "replay": True}, None
    if method in ("policy.apply", "policy.trace", "policy.replay") and (method != "policy.apply"
                                                                       or params.get("dry_run")):
        from workbench.replay import policy

        entries = replayer.entries[:replayer.cursor] if replayer.tutorial else \
            [entry for _, entry in replayer.recording.entries()]
        recorded = policy.recorded_lab(entries, lab)
        if method == "policy.apply":
            return policy.dry_run(recorded, str(params.get("text", "")), str(params.get("source", ""))), None
        if method == "policy.trace":
            return policy.policy_trace(recorded, **params), None
        return policy.policy_replay(recorded, str(params.get("text", "")), list(params.get("flows") or []),
                                    str(params.get("source", "")), bool(params.get("add", False))), None
    if method == "flows.query":
        from workbench.observe import ipc
        from workbench.observe.filters import flows

        frame = recorded_flows(replayer)
        filters = dict(params.get("filters") or {})
        after = params.get("after")
        if after is not None:
            frame = frame.iloc[0:0]          # nothing new happens in a recording
        result = flows(frame, **filters)
        meta = {"seq": len(frame), "lost_events": 0}
        result.attrs = dict(meta)
        return meta, ipc.to_ipc(result)
    return None
