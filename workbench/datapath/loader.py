"""The lab's endpoint datapath: compile bpf/lxc.bpf.c once, attach it to every lxc device.

A :class:`Datapath` belongs to one agent process. Programs stay attached and
maps stay pinned when that process dies (TC holds the programs, bpffs the
maps), so policy keeps being enforced; the next agent makes a new Datapath and
calls :meth:`Datapath.reattach_all`, which swaps its freshly loaded programs in
with ``tc filter replace`` (no moment without a program).

Example::

    >>> dp = Datapath("demo", "wb-demo-node")                     # doctest: +SKIP
    >>> dp.attach_endpoint(endpoint)                               # doctest: +SKIP
    >>> dp.policy_writer().apply(entries, {(endpoint.id, "ingress")})  # doctest: +SKIP
    >>> dp.close()                                                 # doctest: +SKIP
"""

from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from workbench.datapath import abi, build
from workbench.datapath.cookies import PolicyCookies
from workbench.datapath.policymap import PolicyMapWriter
from workbench.datapath.progstats import ProgramStats, program_fd_stats
from workbench.errors import NotFoundError
from workbench.lab.model import Endpoint
from workbench.node import netlink

ENTRY_FILE = "lxc.bpf.c"
# (program, clsact parent): TC ingress on lxc sees what the pod sends.
PROGRAMS = (("from_container", netlink.CLSACT_INGRESS), ("to_container", netlink.CLSACT_EGRESS))
# Our filters' place on the lxc device; user programs (%%ebpf tc) use other prios.
FILTER_PRIO = 1
FILTER_HANDLE = ":1"


def map_max_entries(fd: int) -> int:
    """max_entries of an open map as the kernel has it (a pinned map keeps its first size)."""
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("max_entries:"):
            return int(line.split()[1])
    raise RuntimeError(f"fd {fd} is not a BPF map")


class Datapath:
    """The compiled lxc programs of one lab and its pinned maps, for one agent process.

    Sizes are compile-time options (cflags): ``policy_max`` (both policy
    generations together), ``enforce_max``, ``ct_max``, and any ``cflags``
    (e.g. ``-DCT_REPORT_INTERVAL_NS=1000000000``). A map that is already pinned
    keeps its size; :attr:`PolicyMapWriter.capacity` reports the real one.
    ``cookie_file``: where the policy cookie table is kept (the agent passes the
    lab's state directory, so a restarted agent reads the cookies already in the
    map; workbench/datapath/cookies.py); None keeps it in memory.
    """

    def __init__(self, lab: str, node_netns: str, *, policy_max: int = 65536, enforce_max: int = 16384,
                 ct_max: int = 65536, cflags: list[str] | None = None, cookie_file: Path | None = None) -> None:
        from bcc import BPF

        self.lab = lab
        self.node_netns = node_netns
        flags = [f"-DPOLICY_MAX={policy_max}", f"-DENFORCE_MAX={enforce_max}", f"-DCT_MAX={ct_max}",
                 *(cflags or [])]
        self.bpf = build.compile_inlined(ENTRY_FILE, lab, flags)
        self._programs = {name: self.bpf.load_func(name, BPF.SCHED_CLS) for name, _ in PROGRAMS}
        self._writer: PolicyMapWriter | None = None
        self.cookies = PolicyCookies(cookie_file)

    # -- attaching -------------------------------------------------------------------------
    def _write_endpoint(self, ep: Endpoint, ifindex: int) -> None:
        table = self.bpf[b"endpoints"]
        key = table.Key(ifindex)
        flags = 0
        try:
            flags = int(table[key].flags)  # keep audit mode across re-attach
        except KeyError:
            pass
        table[key] = table.Leaf(ep.id, ep.identity, build.ipv4_be(ep.ipv4), flags)

    def _write_local_delivery(self, ep: Endpoint, ipr: IPRoute, index: int) -> None:
        """How from-container hands established traffic straight to this pod (bpf_redirect_peer)."""
        lxc_mac = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
        with IPRoute(netns=ep.netns) as pod:
            eth0 = netlink.link_index(pod, "eth0")
            pod_mac = pod.get_links(eth0)[0].get_attr("IFLA_ADDRESS")
        table = self.bpf[b"local_endpoints"]
        leaf = table.Leaf()
        leaf.lxc_ifindex = index
        leaf.pod_mac[:] = bytes.fromhex(pod_mac.replace(":", ""))
        leaf.lxc_mac[:] = bytes.fromhex(lxc_mac.replace(":", ""))
        leaf.ep_id = ep.id
        leaf.identity = ep.identity
        table[table.Key(build.ipv4_be(ep.ipv4))] = leaf

    @netlink.off_event_loop
    def attach_endpoint(self, ep: Endpoint) -> None:
        """Write the endpoint's facts and attach both programs to ``ep.lxc`` in the node netns.

        Uses ``tc filter replace`` on a fixed prio/handle, so attaching again
        (or from a new agent) swaps the program without a gap. Sets
        ``ep.ifindex`` when it was 0.
        """
        with IPRoute(netns=self.node_netns) as ipr:
            try:
                index = netlink.link_index(ipr, ep.lxc)
            except NetlinkError as err:
                raise NotFoundError(f"no device {ep.lxc} in {self.node_netns} for endpoint {ep.id} "
                                    f"({ep.namespace}/{ep.pod})") from err
            ep.ifindex = ep.ifindex or index
            # the facts first: with the programs in place, every packet is judged
            self._write_endpoint(ep, index)
            netlink.ensure_clsact(ipr, index)
            for name, parent in PROGRAMS:
                fn = self._programs[name]
                ipr.tc("replace-filter", "bpf", index, FILTER_HANDLE, fd=fn.fd, name=name, parent=parent,
                       classid=1, direct_action=True, prio=FILTER_PRIO)
            # last: only with both programs in place may established traffic bypass to-container
            self._write_local_delivery(ep, ipr, index)

    @netlink.off_event_loop
    def detach_endpoint(self, ep: Endpoint) -> None:
        """Remove both filters and the endpoint's facts. Idempotent (a gone device is fine)."""
        local = self.bpf[b"local_endpoints"]
        try:  # first: from now on every packet to this pod takes the normal path
            del local[local.Key(build.ipv4_be(ep.ipv4))]
        except KeyError:
            pass
        with IPRoute(netns=self.node_netns) as ipr:
            found = ipr.link_lookup(ifname=ep.lxc)
            index = int(found[0]) if found else ep.ifindex
            if found:
                for _, parent in PROGRAMS:
                    try:
                        ipr.tc("del-filter", "bpf", index, FILTER_HANDLE, parent=parent, prio=FILTER_PRIO)
                    except NetlinkError as err:
                        if err.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                            raise
        if index:
            try:
                del self.bpf[b"endpoints"][self.bpf[b"endpoints"].Key(index)]
            except KeyError:
                pass

    def reattach_all(self, eps: list[Endpoint]) -> None:
        """Swap this process's programs in on every endpoint (a restarted agent calls this)."""
        for ep in eps:
            self.attach_endpoint(ep)

    def enable_l7_proxy(self) -> None:
        """Tell the programs that this lab has an L7 proxy (bpf/lib/l7.h: set once, never cleared)."""
        table = self.bpf[b"l7_config"]
        leaf = table[table.Key(0)]
        leaf.proxy_enabled = 1
        table[table.Key(0)] = leaf

    def set_audit(self, ep_id: int | None, on: bool) -> None:
        """Audit mode for one endpoint (or all with ``None``): policy drops pass as AUDIT."""
        table = self.bpf[b"endpoints"]
        found = False
        for key, info in list(table.items()):
            if ep_id is not None and int(info.ep_id) != ep_id:
                continue
            found = True
            flags = int(info.flags)
            flags = flags | abi.EP_AUDIT if on else flags & ~abi.EP_AUDIT
            table[key] = table.Leaf(info.ep_id, info.identity, info.ipv4, flags)
        if ep_id is not None and not found:
            known = sorted(int(v.ep_id) for v in table.values())
            raise NotFoundError(f"no endpoint {ep_id} in lab {self.lab}; endpoints: {known}")

    # -- policy ----------------------------------------------------------------------------
    def policy_writer(self) -> PolicyMapWriter:
        if self._writer is None:
            self._writer = PolicyMapWriter(
                self.bpf, map_max_entries(self.bpf[b"policy"].map_fd),
                map_max_entries(self.bpf[b"policy_enforce"].map_fd), self.lab, self.cookies)
        return self._writer

    # -- observing -------------------------------------------------------------------------
    def metrics(self) -> pd.DataFrame:
        """Datapath counters summed over CPUs: verdict, direction, drop_reason(_desc), packets, bytes.

        Flows come from the ring buffer through :class:`workbench.datapath.ringreader.RingReader`.
        """
        rows = []
        for key, per_cpu in self.bpf[b"metrics"].items():
            rows.append({
                "verdict": abi.VERDICT_NAMES.get(int(key.verdict), str(key.verdict)),
                "direction": abi.DIRECTION_NAMES.get(int(key.direction), str(key.direction)),
                "drop_reason": int(key.reason),
                "drop_reason_desc": abi.drop_reason_name(int(key.reason)),
                "packets": sum(int(v.packets) for v in per_cpu),
                "bytes": sum(int(v.bytes) for v in per_cpu),
            })
        return pd.DataFrame(rows, columns=["verdict", "direction", "drop_reason", "drop_reason_desc",
                                           "packets", "bytes"])

    def conntrack(self) -> pd.DataFrame:
        """The conntrack table (see :func:`workbench.datapath.conntrack.conntrack_table`)."""
        from workbench.datapath.conntrack import conntrack_table

        return conntrack_table(self.bpf)

    def program_stats(self, name: str) -> ProgramStats:
        """The kernel's run time and run count of this datapath's program ``name`` ("from_container",
        "to_container"); counted only while :func:`~workbench.datapath.progstats.run_time_stats` is on."""
        return program_fd_stats(self._programs[name].fd)

    def program_fd(self, name: str) -> int:
        """The file descriptor of this datapath's program ``name`` (e.g. for BPF_PROG_TEST_RUN)."""
        return int(self._programs[name].fd)

    def lost_events(self) -> int:
        """Ring-buffer records the programs could not reserve (all CPUs)."""
        return sum(int(v) for v in self.bpf[b"events_lost"][self.bpf[b"events_lost"].Key(0)])

    def close(self) -> None:
        """Release this process's fds. Programs stay attached and maps pinned."""
        self.bpf.cleanup()

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
