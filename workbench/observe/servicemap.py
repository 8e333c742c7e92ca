"""A Hubble-UI-like service map: pods, services and outside peers, edges coloured by verdict.

Example::

    >>> fig = service_map(lab.flows())   # doctest: +SKIP
    >>> fig.show()                       # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

VERDICT_COLORS = {"FORWARDED": "#2ca02c", "DROPPED": "#d62728", "AUDIT": "#ff7f0e",
                  "REDIRECTED": "#1f77b4", "ERROR": "#7f7f7f"}


def _node_names(frame: pd.DataFrame, side: str) -> pd.Series:
    pod = frame[f"{side}_pod"].astype("object")
    ns = frame[f"{side}_namespace"].astype("object").fillna("")
    ip = frame[f"{side}_ip"].astype("object").fillna("?")
    labels = frame[f"{side}_labels"]
    world = np.array([labels_has(x, "reserved:world") for x in labels], bool) if len(frame) else np.zeros(0, bool)
    names = pd.Series(np.where(pod.notna(), ns + "/" + pod.fillna(""), ip), index=frame.index, dtype="object")
    names[world & pod.isna().to_numpy()] = "world"
    return names


def labels_has(labels: Any, label: str) -> bool:
    return labels is not None and label in list(labels)


def service_edges(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (source, destination, verdict) with the number of flows.

    The destination is the service when the flow went to one (as Hubble UI
    draws it), else the pod, "world", or the peer IP.
    """
    if frame.empty:
        return pd.DataFrame(columns=["source", "destination", "verdict", "flows", "dst_kind"])
    src = _node_names(frame, "src")
    dst_pod = _node_names(frame, "dst")
    svc = frame.dst_service.astype("object")
    ns = frame.dst_namespace.astype("object").fillna("")
    dst = pd.Series(np.where(svc.notna(), "svc:" + ns + "/" + svc.fillna(""), dst_pod), index=frame.index)
    # A reply travels back along its connection's edge; draw each connection once.
    keep = ~frame.is_reply.fillna(False).to_numpy(bool)
    table = pd.DataFrame({"source": src[keep], "destination": dst[keep],
                          "verdict": frame.verdict.astype("object")[keep]})
    edges = table.groupby(["source", "destination", "verdict"], dropna=False).size().reset_index(name="flows")
    edges["dst_kind"] = np.where(edges.destination.str.startswith("svc:"), "service", "endpoint")
    return edges


def service_map(frame: pd.DataFrame, title: str = "Service map") -> go.Figure:
    """A plotly figure: nodes on a circle (services inside), one edge trace per verdict with counts."""
    edges = service_edges(frame)
    nodes = sorted(set(edges.source) | set(edges.destination)) if len(edges) else []
    services = [n for n in nodes if n.startswith("svc:")]
    others = [n for n in nodes if not n.startswith("svc:")]
    position: dict[str, tuple[float, float]] = {}
    for ring, members in ((1.0, others), (0.45, services)):
        for i, name in enumerate(members):
            angle = 2 * math.pi * i / max(len(members), 1) + (0.3 if ring < 1 else 0.0)
            position[name] = (ring * math.cos(angle), ring * math.sin(angle))
    fig = go.Figure()
    for verdict, color in VERDICT_COLORS.items():
        sub = edges[edges.verdict == verdict]
        if sub.empty:
            continue
        xs: list[float | None] = []
        ys: list[float | None] = []
        mid_x, mid_y, texts = [], [], []
        offset = {"FORWARDED": 0.0, "DROPPED": 0.04, "AUDIT": -0.04, "REDIRECTED": 0.08, "ERROR": -0.08}[verdict]
        for row in sub.itertuples(index=False):
            (x0, y0), (x1, y1) = position[row.source], position[row.destination]
            xs += [x0, x1, None]
            ys += [y0 + offset, y1 + offset, None]
            mid_x.append((x0 + x1) / 2)
            mid_y.append((y0 + y1) / 2 + offset)
            texts.append(str(row.flows))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=verdict, line={"color": color, "width": 2},
                                 hoverinfo="skip", legendgroup=verdict))
        fig.add_trace(go.Scatter(
            x=mid_x, y=mid_y, mode="text", text=texts, textfont={"color": color}, showlegend=False,
            name=f"{verdict} flows", legendgroup=verdict,
            hovertext=[f"{r.source} → {r.destination.removeprefix('svc:')}: {r.flows} {verdict}"
                       for r in sub.itertuples(index=False)], hoverinfo="text"))
    if nodes:
        fig.add_trace(go.Scatter(
            x=[position[n][0] for n in nodes], y=[position[n][1] for n in nodes], mode="markers+text",
            text=[n.removeprefix("svc:") for n in nodes], textposition="top center", name="nodes",
            marker={"size": [22 if n.startswith("svc:") else 14 for n in nodes],
                    "symbol": ["square" if n.startswith("svc:") else "circle" for n in nodes],
                    "color": ["#9467bd" if n.startswith("svc:") else "#17becf" for n in nodes]},
            hoverinfo="text", showlegend=False))
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"},
                      plot_bgcolor="white", height=520)
    return fig
