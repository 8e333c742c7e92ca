"""The shape of every measured figure in bench/results/*.json (see bench/README.md)."""

from __future__ import annotations

import statistics
from typing import Any

SECTIONS = ("datapath", "attribution", "policy_apply", "ingest", "lab", "l7", "flows_wire", "dns")


def figure(samples: list[float], unit: str, baseline: dict[str, Any] | None = None,
           higher_is_better: bool = True) -> dict[str, Any]:
    """Summarise repeated samples; with a baseline figure, add the ratio of medians.

    The ratio is always median / baseline median, so for throughput >1 is better
    and for times <1 is better; ``higher_is_better`` records which one applies.
    """
    if not samples:
        raise ValueError("a figure needs at least one sample")
    result: dict[str, Any] = {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "unit": unit,
        "samples": len(samples),
        "higher_is_better": higher_is_better,
    }
    if baseline is not None:
        result["baseline"] = baseline["median"]
        result["ratio"] = result["median"] / baseline["median"] if baseline["median"] else None
    return result


def iter_figures(doc: Any, path: str = "") -> Any:
    """Yield (path, figure) for every figure object in a results document."""
    if isinstance(doc, dict):
        if {"median", "min", "max", "unit"} <= doc.keys():
            yield path, doc
            return
        for key, value in doc.items():
            yield from iter_figures(value, f"{path}.{key}" if path else key)


def validate(doc: dict[str, Any]) -> list[str]:
    """Problems with a results document against the schema; empty when valid."""
    problems = []
    for key in SECTIONS:
        if key not in doc:
            problems.append(f"missing top-level key {key!r}")
    if "machine" not in doc:
        problems.append("missing 'machine'")
    for path, fig in iter_figures({k: doc.get(k) for k in SECTIONS}):
        for field in ("median", "min", "max"):
            if not isinstance(fig.get(field), (int, float)):
                problems.append(f"{path}.{field} is not a number")
        if not isinstance(fig.get("unit"), str):
            problems.append(f"{path}.unit is not a string")
        if not fig["min"] <= fig["median"] <= fig["max"]:
            problems.append(f"{path}: min <= median <= max does not hold")
        if "ratio" in fig and "baseline" not in fig:
            problems.append(f"{path}: ratio without baseline")
    return problems
