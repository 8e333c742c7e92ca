"""eBPF Workbench: a Cilium-style lab node driven from JupyterLab.

Nothing happens at import time: the lab, datapath and notebook layers are
imported when first used.

Example::

    import workbench as wb
    report = wb.status()
    assert report.ok
"""

from __future__ import annotations

from typing import Any

from workbench.errors import NotFoundError, PrivilegeError, SetupError, ValidationError, WorkbenchError

__all__ = ["status", "program", "read_flows", "example", "tutorial", "Lab", "WorkbenchError", "SetupError", "PrivilegeError", "NotFoundError", "ValidationError",
           "load_ipython_extension"]
__version__ = "0.1.0"


def status() -> Any:
    """Run the preflight checks and return a Report (HTML table in notebooks)."""
    from workbench.node.preflight import run_preflight

    return run_preflight()


def __getattr__(name: str) -> Any:
    # `wb.Lab` imports the lab layer (pandas, the agent client) only when first used.
    if name == "Lab":
        from workbench.client.lab import Lab

        return Lab
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def tutorial(name: str) -> Any:
    """Name the tutorial a notebook is (its first cell). Without root or eBPF this switches to replay mode:
    the lab is served from a recording made on a real lab node, and a banner says so.

    Example::

        wb.tutorial("02-observe")
    """
    from workbench.replay.session import tutorial as start

    return start(name)


def program(name: str) -> Any:
    """A program this kernel attached with ``%%ebpf`` (its maps as DataFrames).

    Example::

        counter = wb.program("count_packets")
        counter.maps["counts"].to_frame()

    In replay mode it is the program as the tutorial read it on the lab node (its maps' recorded frames).
    """
    from workbench.replay.session import session

    if session().replaying:
        from workbench.notebook.replayed_programs import replayed_program

        return replayed_program(name)
    from workbench.notebook.programs import manager
    from workbench.notebook.replayed_programs import record_program

    found = manager().get(name)
    record_program(found)          # record mode: replay mode serves it again
    return found


def example(name: str) -> Any:
    """The path of a file shipped with the workbench: "starwars.yaml", "rule1.yaml", "rule1-l7.yaml".

    Example::

        lab.policy.apply(wb.example("rule1.yaml"))
    """
    from pathlib import Path

    path = Path(__file__).parent / "data" / name
    if not path.is_file():
        shipped = sorted(p.name for p in path.parent.iterdir() if p.suffix == ".yaml")
        raise NotFoundError(f"no example {name}; examples: {', '.join(shipped)}")
    return path


def read_flows(path: str) -> Any:
    """Flows from a parquet file (``workbench flows export``, ``lab.export_flows``, the archive), with the
    flow columns' dtypes.

    Example::

        lab.export_flows("/tmp/flows.parquet")
        wb.read_flows("/tmp/flows.parquet")
    """
    from workbench.observe.archive import load_parquet

    return load_parquet(path)


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext workbench`: registers the %ebpf, %%ebpf and %%policy magics."""
    from workbench.notebook.magics import register_magics

    register_magics(ipython)
