"""Plots of a results document: one function per section, shared by `make bench` (HTML next to the
JSON) and the 06-performance tutorial, so both show the same thing from the same numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from bench.figures import SECTIONS, iter_figures


def figures_frame(results: dict[str, Any]) -> pd.DataFrame:
    """Every figure, flat: path, median, min, max, unit, ratio."""
    return pd.DataFrame([{"figure": path, **{k: fig.get(k) for k in ("median", "min", "max", "unit", "ratio")}}
                         for path, fig in iter_figures({k: results.get(k) for k in SECTIONS})])


def datapath_plot(results: dict[str, Any]) -> go.Figure:
    """Throughput of each configuration as a ratio to the bare veth, min-max as error bars."""
    rows = []
    for metric, label in (("udp_64b_pps", "UDP 64-byte packets/s"), ("tcp_bps", "TCP throughput")):
        for config, fig in results["datapath"].get(metric, {}).items():
            if "ratio" in fig:
                rows.append({"metric": label, "configuration": config.replace("_", " "),
                             "ratio to bare veth": fig["ratio"], "low": fig["min"] / fig["baseline"],
                             "high": fig["max"] / fig["baseline"]})
    frame = pd.DataFrame(rows)
    plot = px.bar(frame, x="configuration", y="ratio to bare veth", color="metric", barmode="group",
                  error_y=frame["high"] - frame["ratio to bare veth"],
                  error_y_minus=frame["ratio to bare veth"] - frame["low"],
                  title="Throughput relative to a bare veth (1.0 = no cost), min-max as error bars")
    plot.add_hline(y=1.0, line_dash="dot")
    return plot


def policy_apply_plot(results: dict[str, Any]) -> go.Figure:
    """Time until a policy change is in force, eBPF against iptables-restore."""
    frame = pd.DataFrame([{"engine": key.split("_")[0], "rules": key.split("_")[1], "ms": fig["median"],
                           "min": fig["min"], "max": fig["max"]}
                          for key, fig in results["policy_apply"].items()
                          if not key.startswith("ebpf_vs") and isinstance(fig, dict) and "median" in fig])
    return px.bar(frame, x="rules", y="ms", color="engine", barmode="group", log_y=True,
                  error_y=frame["max"] - frame["ms"], error_y_minus=frame["ms"] - frame["min"],
                  title="Time until a policy change is in force (ms, log scale)")


def ingest_plot(results: dict[str, Any]) -> go.Figure:
    """Flow events per second into DataFrame rows, batched against per-event callback."""
    frame = pd.DataFrame([{"path": name.replace("_events_per_s", "").replace("_", " "), "events/s": fig["median"]}
                          for name, fig in results["ingest"].items()
                          if isinstance(fig, dict) and fig.get("unit") == "events/s"])
    return px.bar(frame, x="path", y="events/s", title="Flow events per second into DataFrame rows")


def lab_plot(results: dict[str, Any]) -> go.Figure:
    """`lab up` and `lab down` seconds of the demo and of the 50-pod lab."""
    lab = results["lab"]
    frame = pd.DataFrame([{"lab": f"{name} ({lab[name]['pods']} pods)", "phase": phase, "s": lab[name][phase]["median"]}
                          for name in ("demo", "pods50") if name in lab for phase in ("up", "down")])
    return px.bar(frame, x="lab", y="s", color="phase", barmode="group", title="lab up / lab down (seconds)")


def l7_plot(results: dict[str, Any]) -> go.Figure:
    """Requests/s and p99 latency through the L7 proxy against direct, by client count."""
    frame = pd.DataFrame([{"clients": key.split("_")[1], "path": metric.split("_")[0],
                           "metric": "requests/s" if metric.endswith("rps") else "p99 ms", "value": fig["median"]}
                          for key, section in results["l7"].items() if key.startswith("clients_")
                          for metric, fig in section.items() if isinstance(fig, dict) and "median" in fig])
    plot = px.bar(frame, x="clients", y="value", color="path", barmode="group", facet_col="metric",
                  title="Through the L7 proxy vs direct")
    return plot.update_yaxes(matches=None, showticklabels=True)


def flows_wire_plot(results: dict[str, Any]) -> go.Figure:
    """flows.query of 100k flows, Arrow IPC against JSON lines: end to end, encode, decode (ms, log scale)."""
    section = results["flows_wire"]
    frame = pd.DataFrame([{"step": key.removesuffix("_ms").replace("_", " "), "wire": wire, "ms": ms}
                          for key in ("query_end_to_end_ms", "agent_encode_ms", "client_decode_ms")
                          for wire, ms in (("Arrow IPC", section[key]["median"]),
                                           ("JSON lines (before)", section[key]["baseline"]))])
    return px.bar(frame, x="step", y="ms", color="wire", barmode="group", log_y=True,
                  title=f"flows.query of {section['rows']:,} flows across the agent socket (ms, log scale)")


def dns_plot(results: dict[str, Any]) -> go.Figure:
    """DNS queries/s and p50/p99 latency through the DNS proxy against direct to kube-dns, by queries in flight."""
    frame = pd.DataFrame([{"in flight": key.split("_")[1], "path": metric.split("_")[0],
                           "metric": "queries/s" if metric.endswith("qps") else metric.split("_")[1] + " ms",
                           "value": fig["median"]}
                          for key, section in results["dns"].items() if key.startswith("inflight_")
                          for metric, fig in section.items()
                          if isinstance(fig, dict) and fig.get("unit") in ("queries/s", "ms")])
    plot = px.bar(frame, x="in flight", y="value", color="path", barmode="group", facet_col="metric",
                  title="DNS through the proxy vs direct to kube-dns")
    return plot.update_yaxes(matches=None, showticklabels=True)


PLOTS = {"datapath": datapath_plot, "policy_apply": policy_apply_plot, "ingest": ingest_plot,
         "lab": lab_plot, "l7": l7_plot, "flows_wire": flows_wire_plot,
         "dns": dns_plot}


def write_html(results: dict[str, Any], path: Path) -> Path:
    """All section plots (of the sections that have figures) in one HTML page (plotly.js from its CDN)."""
    parts = [f"<h1>eBPF Workbench benchmarks</h1><p>{results['date']} on {results['machine']['cpu']} "
             f"({results['machine']['cores']} cores), kernel {results['machine']['kernel']}</p>"]
    for section, plot in PLOTS.items():
        if isinstance(results.get(section), dict) and "error" not in results[section]:
            parts.append(plot(results).to_html(full_html=False, include_plotlyjs="cdn"))
    path.write_text("<html><body>" + "\n".join(parts) + "</body></html>")
    return path
