"""Attaching a loaded BCC function to its hook, and replacing an earlier attachment in place.

Each attachment records enough to detach itself later without the BPF object
(BCC's atexit cleanup may have closed the program fd by then): XDP by device
and program id, TC by parent/prio/handle, cgroup by program id (reopened
through the kernel), tracepoints through the BPF object that owns the perf fd.

Replacement never leaves a gap where the kernel allows it: XDP and TC swap the
program in one netlink request; cgroup programs are attached with
BPF_F_ALLOW_MULTI, the new one first, then the old one is detached.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from workbench.errors import NotFoundError, ValidationError
from workbench.node import netlink

R = TypeVar("R")

# linux/bpf.h and if_link.h values (BCC 0.26 spells some differently).
PROG_TYPES = {"xdp": 6, "tc": 3, "cgroup_skb": 8, "connect4": 18, "tracepoint": 5, "raw_tracepoint": 17}
ATTACH_CGROUP_INGRESS, ATTACH_CGROUP_EGRESS, ATTACH_INET4_CONNECT = 0, 1, 10
BPF_F_ALLOW_MULTI = 2
XDP_FLAGS_UPDATE_IF_NOEXIST, XDP_FLAGS_SKB_MODE, XDP_FLAGS_DRV_MODE = 1, 2, 4
TC_PARENTS = {"ingress": netlink.CLSACT_INGRESS, "egress": netlink.CLSACT_EGRESS}
TC_HANDLE = 1
# User TC filters take priorities from here, after the lab datapath's (low) ones.
TC_USER_PRIO_BASE = 0xC000

# pyroute2's pushns/popns keep one process-wide stack: one netns switch at a time.
_NETNS_LOCK = threading.Lock()


def run_in_netns(name: str, func: Callable[[], R]) -> R:
    """Run ``func`` in a worker thread that has entered netns ``name`` (the caller's thread never moves)."""
    if name not in netlink.list_netns(name):
        raise NotFoundError(f"no network namespace {name!r}; workbench namespaces: "
                            f"{', '.join(netlink.list_netns('wb-')) or 'none'}")
    box: dict[str, Any] = {}

    def work() -> None:
        with _NETNS_LOCK:
            try:
                with netlink.in_netns(name):
                    box["value"] = func()
            except BaseException as err:  # re-raised in the caller
                box["error"] = err

    thread = threading.Thread(target=work, name=f"workbench-netns-{name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def device_index(dev: str, netns: str) -> int:
    """The ifindex of ``dev`` in the calling thread's netns (call it inside run_in_netns)."""
    try:
        return socket.if_nametoindex(dev)
    except OSError:
        raise NotFoundError(f"no device {dev!r} in netns {netns}") from None


def prog_id(fd: int) -> int:
    """The kernel's id of the program behind ``fd`` (from /proc fdinfo, no extra syscall wrapper)."""
    for line in open(f"/proc/self/fdinfo/{fd}"):
        if line.startswith("prog_id:"):
            return int(line.split()[1])
    raise ValueError(f"fd {fd} is not a BPF program")


def prog_fd_by_id(pid: int) -> int:
    from bcc.libbcc import lib

    fd = lib.bpf_prog_get_fd_by_id(pid)
    if fd < 0:
        raise OSError(-fd if fd < -1 else errno.ENOENT, f"BPF program id {pid} is gone")
    return int(fd)


def _bcc_error(err: Exception) -> str:
    return str(err).replace("b'", "'")


@dataclass
class XdpAttachment:
    netns: str
    dev: str
    mode: str
    prog_id: int

    @property
    def target(self) -> str:
        return f"{self.netns}/{self.dev}"

    def _flags(self) -> int:
        return XDP_FLAGS_DRV_MODE if self.mode == "native" else XDP_FLAGS_SKB_MODE

    def current_prog_id(self) -> int:
        def read() -> int:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                link = ipr.get_links(netlink.link_index(ipr, self.dev))[0]
            xdp = link.get_attr("IFLA_XDP")
            return int(xdp.get_attr("IFLA_XDP_PROG_ID") or 0) if xdp else 0

        try:
            return run_in_netns(self.netns, read)
        except (NotFoundError, OSError):
            return 0

    def detach(self) -> None:
        """Remove the XDP program, unless the device now runs someone else's (idempotent)."""
        if self.current_prog_id() != self.prog_id:
            return
        from bcc import BPF

        run_in_netns(self.netns, lambda: BPF.remove_xdp(self.dev.encode(), self._flags()))


def attach_xdp(fn: Any, netns: str, dev: str, mode: str, previous: XdpAttachment | None) -> XdpAttachment:
    """Attach (or atomically replace ``previous`` on the same device and mode)."""
    from bcc import BPF

    new = XdpAttachment(netns, dev, mode, prog_id(fn.fd))
    # Replacing on the same device (the caller refuses a mode change): no UPDATE_IF_NOEXIST, the kernel swaps.
    same_hook = previous is not None and (previous.netns, previous.dev, previous.mode) == (netns, dev, mode)
    flags = new._flags() | (0 if same_hook else XDP_FLAGS_UPDATE_IF_NOEXIST)

    def attach() -> None:
        device_index(dev, netns)
        try:
            BPF.attach_xdp(dev.encode(), fn, flags)
        except Exception as err:
            if "Device or resource busy" in str(err) or "File exists" in str(err):
                raise ValidationError(f"{dev} in {netns} already runs an XDP program that is not this cell's; "
                                      "detach it first") from None
            raise ValidationError(f"attaching XDP to {dev} in {netns} failed: {_bcc_error(err)}") from None

    run_in_netns(netns, attach)
    return new


@dataclass
class TcAttachment:
    netns: str
    dev: str
    direction: str
    prio: int
    prog_id: int

    @property
    def target(self) -> str:
        return f"{self.netns}/{self.dev} {self.direction}"

    def detach(self) -> None:
        """Delete this filter by parent/prio/handle (idempotent)."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        def delete() -> None:
            with IPRoute() as ipr:
                try:
                    index = netlink.link_index(ipr, self.dev)
                    ipr.tc("del-filter", "bpf", index, TC_HANDLE, parent=TC_PARENTS[self.direction],
                           prio=self.prio)
                except NetlinkError as err:
                    if err.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                        raise

        try:
            run_in_netns(self.netns, delete)
        except NotFoundError:
            pass


def _used_prios(ipr: Any, index: int, parent: int) -> set[int]:
    return {int(f["info"]) >> 16 for f in ipr.get_filters(index=index, parent=parent)}


def attach_tc(fn: Any, name: str, netns: str, dev: str, direction: str,
              previous: TcAttachment | None) -> TcAttachment:
    """Attach a direct-action clsact filter, or replace ``previous`` at its prio (one netlink request)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    parent = TC_PARENTS[direction]
    same_hook = previous is not None and (previous.netns, previous.dev, previous.direction) == (netns, dev, direction)

    def attach() -> int:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=dev)
            if not found:
                raise NotFoundError(f"no device {dev!r} in netns {netns}")
            index = int(found[0])
            netlink.ensure_clsact(ipr, index)
            if same_hook and previous is not None:
                prio, command = previous.prio, "replace-filter"
            else:
                used = _used_prios(ipr, index, parent)
                prio = next(p for p in range(TC_USER_PRIO_BASE, 0xFFFF) if p not in used)
                command = "add-filter"
            try:
                ipr.tc(command, "bpf", index, TC_HANDLE, fd=fn.fd, name=f"wb-user-{name}", parent=parent,
                       prio=prio, direct_action=True)
            except NetlinkError as err:
                raise ValidationError(f"attaching TC {direction} to {dev} in {netns} failed: {err}") from None
            return prio

    prio = run_in_netns(netns, attach)
    return TcAttachment(netns, dev, direction, prio, prog_id(fn.fd))


@dataclass
class CgroupAttachment:
    cgroup: str
    attach_type: int
    prog_id: int
    kind: str

    @property
    def target(self) -> str:
        return self.cgroup + (f" {'ingress' if self.attach_type == 0 else 'egress'}" if self.kind == "cgroup_skb" else "")

    def detach(self) -> None:
        """Detach exactly this program (by id) from the cgroup (idempotent)."""
        from bcc.libbcc import lib

        try:
            pfd = prog_fd_by_id(self.prog_id)
        except OSError:
            return
        try:
            cfd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            os.close(pfd)
            return
        try:
            lib.bpf_prog_detach2(pfd, cfd, self.attach_type)   # ENOENT when already gone: fine
        finally:
            os.close(cfd)
            os.close(pfd)


def attach_cgroup(fn: Any, kind: str, cgroup: str, direction: str,
                  previous: CgroupAttachment | None) -> CgroupAttachment:
    """Attach with BPF_F_ALLOW_MULTI (so lab programs on the cgroup keep running); then drop ``previous``."""
    from bcc.libbcc import lib

    attach_type = ATTACH_INET4_CONNECT if kind == "connect4" else (
        ATTACH_CGROUP_INGRESS if direction == "ingress" else ATTACH_CGROUP_EGRESS)
    try:
        cfd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise NotFoundError(f"no cgroup {cgroup}") from None
    try:
        res = lib.bpf_prog_attach(fn.fd, cfd, attach_type, BPF_F_ALLOW_MULTI)
    finally:
        os.close(cfd)
    if res < 0:
        raise ValidationError(f"attaching {kind} to cgroup {cgroup} failed: {os.strerror(-res)}")
    new = CgroupAttachment(cgroup, attach_type, prog_id(fn.fd), kind)
    if previous is not None:
        previous.detach()
    return new


@dataclass
class TraceAttachment:
    """A tracepoint held by a perf event fd of the owning BPF object; detached by its cleanup."""

    kind: str
    tracepoint: str
    bpf: Any

    @property
    def target(self) -> str:
        return self.tracepoint

    def detach(self) -> None:
        tp = self.tracepoint.encode()
        if self.kind == "tracepoint" and tp in self.bpf.tracepoint_fds:
            self.bpf.detach_tracepoint(tp)
        elif self.kind == "raw_tracepoint" and tp in self.bpf.raw_tracepoint_fds:
            self.bpf.detach_raw_tracepoint(tp)


def attach_trace(bpf: Any, fn_name: str, kind: str, tracepoint: str) -> TraceAttachment:
    """Attach unless BCC already did (its TRACEPOINT_PROBE/RAW_TRACEPOINT_PROBE functions auto-attach)."""
    tp = tracepoint.encode()
    held = bpf.tracepoint_fds if kind == "tracepoint" else bpf.raw_tracepoint_fds
    if tp not in held:
        try:
            if kind == "tracepoint":
                category, event = tracepoint.split(":")
                if not os.path.isdir(f"/sys/kernel/tracing/events/{category}/{event}"):
                    raise NotFoundError(f"no tracepoint {tracepoint} (see /sys/kernel/tracing/available_events)")
                bpf.attach_tracepoint(tp=tp, fn_name=fn_name.encode())
            else:
                bpf.attach_raw_tracepoint(tp=tp, fn_name=fn_name.encode())
        except NotFoundError:
            raise
        except Exception as err:
            raise ValidationError(f"attaching {kind} {tracepoint} failed: {_bcc_error(err)}") from None
    return TraceAttachment(kind, tracepoint, bpf)


Attachment = XdpAttachment | TcAttachment | CgroupAttachment | TraceAttachment
