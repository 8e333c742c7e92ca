"""Thin, idempotent netlink helpers over pyroute2 (never IPDB).

Every helper that creates state has a matching remover that tolerates the
object being gone already, so teardown after a crash is safe to repeat.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

NETNS_DIR = "/run/netns"

P = ParamSpec("P")
R = TypeVar("R")


def off_event_loop(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` in a worker thread when the caller's thread runs an asyncio loop.

    pyroute2 >= 0.9 drives netlink through asyncio and refuses to run inside a
    running loop, which is exactly where notebook code runs (ipykernel). A
    thread of its own has no loop, so the synchronous API works there.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return func(*args, **kwargs)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="workbench-netlink") as pool:
            return pool.submit(func, *args, **kwargs).result()

    return wrapper


def list_netns(prefix: str = "") -> list[str]:
    """Named network namespaces whose name starts with ``prefix``."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def create_netns(name: str) -> None:
    """Create the named netns (no error when it exists) with loopback up."""
    if name not in list_netns(name):
        netns.create(name)
    with IPRoute(netns=name) as ipr:
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")


def remove_netns(name: str) -> None:
    """Remove the named netns; its veth ends go with it. Idempotent."""
    try:
        netns.remove(name)
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.EINVAL):
            raise
    except FileNotFoundError:
        pass


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with this thread inside netns ``name`` (for APIs that use the current netns)."""
    netns.pushns(name)
    try:
        yield
    finally:
        netns.popns()


def link_index(ipr: IPRoute, ifname: str) -> int:
    """Interface index by name, or NetlinkError(ENODEV)."""
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetlinkError(errno.ENODEV, f"no interface {ifname}")
    return int(found[0])


# The clsact qdisc's two hooks (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / _EGRESS)): the parent of a
# TC filter. "ingress" is what the device receives: on a pod's host-side veth, what the pod sends.
CLSACT_INGRESS = 0xFFFFFFF2
CLSACT_EGRESS = 0xFFFFFFF3


def ensure_clsact(ipr: IPRoute, index: int) -> None:
    """Add the clsact qdisc unless it is there."""
    try:
        ipr.tc("add", "clsact", index)
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            raise
