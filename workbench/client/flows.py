"""Flows, metrics and exports from a running lab agent (the client side of the observe API).

The agent serves these methods (workbench/agent/flows.py):

- ``flows.query(filters, after=None)`` -> ``{"seq": int, "lost_events": int}`` (and
  ``"archive": {"dropped", "error"}`` when the lab archives) plus the
  filtered flows as Arrow IPC stream bytes (a binary reply, :mod:`workbench.wire`)
- ``flows.export(path, filters)`` -> ``{"path": str, "rows": int}``
- ``metrics.text()`` -> the Prometheus exposition as text
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from workbench.lab.names import DEFAULT_LAB
from workbench.observe import ipc

if TYPE_CHECKING:
    from workbench.client.transport import AgentClient


def _client(lab: str | None) -> AgentClient:
    from workbench.client.transport import AgentClient

    return AgentClient(lab or DEFAULT_LAB)


def query_flows(client: AgentClient, after: int | None = None, **filters: Any) -> pd.DataFrame:
    """``flows.query`` through ``client``: the flows with the flow schema's exact dtypes.

    ``attrs`` has ``lost_events`` and ``seq``.

    Example::

        >>> query_flows(AgentClient("demo"), verdict="DROPPED").verdict.dtype   # doctest: +SKIP
        CategoricalDtype(categories=['FORWARDED', 'DROPPED', ...], ordered=False, categories_dtype=str)
    """
    meta, payload = client.call_binary("flows.query", filters=_jsonable(filters), after=after)
    frame = ipc.from_ipc(payload, document=f"flows of lab {client.lab}")
    frame.attrs["lost_events"] = int(meta.get("lost_events", 0))
    frame.attrs["seq"] = int(meta.get("seq", 0))
    if "archive" in meta:   # {"dropped", "error"} of the lab's archive, for the dashboard
        frame.attrs["archive"] = dict(meta["archive"])
    return frame


def agent_flows(lab: str | None = None, after: int | None = None, **filters: Any) -> pd.DataFrame:
    """The lab's flows, filtered in the agent; ``attrs`` has ``lost_events`` and ``seq``.

    ``filters`` are :func:`workbench.observe.filters.flows`' keyword arguments, the
    DNS ones included: ``fqdn`` / ``from_fqdn`` / ``to_fqdn`` (Hubble's FQDN pattern
    over ``src_names`` / ``dst_names``, e.g. ``"*.github.com"``) and ``dns_query``
    (a regex over ``dns_query``).

    Example::

        >>> agent_flows("demo", to_fqdn="api.github.com", last=20)   # doctest: +SKIP
    """
    return query_flows(_client(lab), after=after, **filters)


def agent_export(path: str, lab: str | None = None, **filters: Any) -> dict[str, Any]:
    """Have the agent write the lab's (filtered) flows to ``path`` as parquet."""
    result: dict[str, Any] = _client(lab).call("flows.export", path=path, filters=_jsonable(filters))
    return result


def agent_metrics_text(lab: str | None = None) -> str:
    """The lab's Prometheus exposition."""
    return str(_client(lab).call("metrics.text"))


def _jsonable(filters: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in filters.items():
        if value is None:
            continue
        if isinstance(value, pd.Timestamp):
            value = value.isoformat()
        elif hasattr(value, "isoformat"):
            value = value.isoformat()
        out[key] = value
    return out


# -- what `Lab` (workbench/client/lab.py) exposes, in one call each ------------------------------

def lab_metrics(lab: str | None = None) -> pd.DataFrame:
    """``lab.metrics()``: the exposition parsed into name, labels, value, type."""
    from workbench.observe.metrics import metrics_frame

    return metrics_frame(agent_metrics_text(lab))


def lab_dashboard(lab: str | None = None, *, start: bool = True, **options: Any) -> Any:
    """``lab.observe()``: the live dashboard, polling the agent for new flows every second."""
    from workbench.observe.dashboard import observe_dashboard

    return observe_dashboard(lambda after: agent_flows(lab, after=after), start=start, **options)


def lab_service_map(lab: str | None = None, **filters: Any) -> Any:
    """``lab.service_map()``: the service map of the lab's stored flows."""
    from workbench.observe.servicemap import service_map

    return service_map(agent_flows(lab, **filters), title=f"Service map of lab {lab or DEFAULT_LAB}")
