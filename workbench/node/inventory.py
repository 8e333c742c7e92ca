"""What workbench state exists on this node: netns, pins, cgroups, hosts files, attachments.

Used by `lab down` (to clean up after a crash, it enumerates rather than trusts
a state file) and by the test suite's leak check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from workbench.node import netlink, system

ETC_NETNS = Path("/etc/netns")


@dataclass
class Inventory:
    netns: list[str] = field(default_factory=list)
    pins: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    hosts_dirs: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.netns or self.pins or self.cgroups or self.hosts_dirs)

    def describe(self) -> str:
        parts = []
        for label, items in (("netns", self.netns), ("pins", self.pins), ("cgroups", self.cgroups),
                             ("/etc/netns dirs", self.hosts_dirs)):
            if items:
                parts.append(f"{label}: {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}")
        return "; ".join(parts) or "nothing"


def _walk(root: Path) -> list[str]:
    if not root.exists():
        return []
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        found.extend(str(Path(dirpath) / name) for name in filenames)
        found.extend(str(Path(dirpath) / name) for name in dirnames)
    return sorted(found)


def cgroup_parent() -> Path | None:
    root = system.cgroup2_root()
    return root / system.CGROUP_PARENT if root else None


def take_inventory(prefix: str = system.NETNS_PREFIX) -> Inventory:
    """Workbench objects whose names start with ``prefix`` (default: all of them)."""
    cg = cgroup_parent()
    cgroups = []
    if cg and cg.exists():
        cgroups = [str(p) for p in sorted(cg.rglob("*")) if p.is_dir()] or []
    hosts = sorted(str(p) for p in ETC_NETNS.glob(f"{prefix}*")) if ETC_NETNS.exists() else []
    return Inventory(
        netns=netlink.list_netns(prefix),
        pins=_walk(system.PIN_ROOT),
        cgroups=cgroups,
        hosts_dirs=hosts,
    )


def remove_cgroup_tree(path: Path) -> None:
    """Kill every process in a cgroup subtree, then remove the directories bottom-up."""
    if not path.exists():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        _kill_and_rmdir(sub)
    _kill_and_rmdir(path)


def _kill_and_rmdir(path: Path) -> None:
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        try:
            kill_file.write_text("1")
        except OSError:
            pass
    else:
        for pid in (path / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            import time

            time.sleep(0.02)
    path.rmdir()


def host_netns_attachments() -> list[str]:
    """TC/XDP programs attached in the machine's own netns (the lab must never add any)."""
    if not shutil.which("bpftool"):
        return []
    out = subprocess.run(["bpftool", "-j", "net", "show"], capture_output=True, text=True, check=False).stdout
    try:
        data = json.loads(out or "[]")
    except json.JSONDecodeError:
        return []
    found: list[str] = []
    for section in data:
        for kind in ("xdp", "tc"):
            for item in section.get(kind, []):
                found.append(f"{kind}:{item.get('devname')}:{item.get('name') or item.get('id')}")
    return sorted(found)


def lab_inventory(lab: str) -> Inventory:
    """What exists of one lab: its netns and hosts dirs (prefix wb-<lab>-), pins and cgroup subtree.

    Lab names contain no '-', so the prefix cannot match another lab's objects.
    """
    prefix = f"{system.NETNS_PREFIX}{lab}-"
    cg = cgroup_parent()
    lab_cg = cg / lab if cg else None
    cgroups = [str(lab_cg)] + [str(p) for p in sorted(lab_cg.rglob("*")) if p.is_dir()] \
        if lab_cg is not None and lab_cg.exists() else []
    hosts = sorted(str(p) for p in ETC_NETNS.glob(f"{prefix}*")) if ETC_NETNS.exists() else []
    pins = _walk(system.PIN_ROOT / lab)
    if (system.PIN_ROOT / lab).exists():
        pins.insert(0, str(system.PIN_ROOT / lab))
    return Inventory(netns=netlink.list_netns(prefix), pins=pins, cgroups=cgroups, hosts_dirs=hosts)
