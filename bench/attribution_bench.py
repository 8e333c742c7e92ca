"""Policy attribution's cost as a bench section of its own: see ``attribution_cost`` in bench/datapath_bench.py.

Run alone: ``python -m bench --only attribution`` (root).
"""

from __future__ import annotations

from typing import Any

from bench.datapath_bench import attribution_cost


def run(quick: bool = False) -> dict[str, Any]:
    """The lxc program with and without the policy cookie, measured round-robin in one run."""
    return attribution_cost(quick=quick)
