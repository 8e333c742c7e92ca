"""Hubble-style observability as DataFrames: flow store, filters, renderers, metrics, archive, dashboards.

Modules: schema (flow columns and dtypes, docs/flows.md; drop reasons), events (the
ring-buffer record), enrich and
store (the agent's flow store), filters (`hubble observe` filters), render
(compact/table/JSON lines), metrics (Prometheus, Hubble's names), archive
(parquet), dashboard and servicemap (notebook widgets). The agent side is
workbench/agent/flows.py, the client side workbench/client/flows.py.

The names below are imported on first use, so ``import workbench.observe``
stays cheap.

Example::

    >>> from workbench.observe import flows, load_parquet      # doctest: +SKIP
    >>> flows(load_parquet("flows.parquet"), verdict="DROPPED")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "flows": "filters", "FlowStore": "store", "EnrichmentContext": "enrich", "empty_flows": "schema",
    "validate_flows": "schema", "coerce_flows": "schema", "COLUMNS": "schema", "DROP_REASONS": "schema",
    "export_parquet": "archive", "load_parquet": "archive", "ContinuousArchiver": "archive",
    "metrics_frame": "metrics", "FlowMetrics": "metrics", "observe_dashboard": "dashboard",
    "service_map": "servicemap", "to_json_lines": "render",
    "read_json_lines": "render",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'workbench.observe' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
