"""`workbench status`: can this node run a lab? One row per check, like `cilium status`.

Each program and map type the workbench uses is actually loaded (and where it
makes sense attached) in a throwaway netns and cgroup, because a kernel config
option being present says less than a program passing the verifier.
"""

from __future__ import annotations

import os
import platform
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from workbench.node import netlink, system

Status = Literal["ok", "warn", "fail"]


@dataclass
class Check:
    """One preflight result. ``required`` checks decide the exit code."""

    name: str
    status: Status
    detail: str
    hint: str = ""
    required: bool = True


@dataclass
class Report:
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks if c.required)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([asdict(c) for c in self.checks])

    def _repr_html_(self) -> str:
        return str(self.to_frame().to_html(index=False))

    def format_table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = []
        for c in self.checks:
            line = f"{c.name:<{width}}  {c.status.upper():<4}  {c.detail}"
            if c.status != "ok" and c.hint:
                line += f"  -> {c.hint}"
            lines.append(line)
        lines.append(f"\nnode can run a lab: {'yes' if self.ok else 'no'}")
        return "\n".join(lines)


PROBE_PROGRAM = r"""
BPF_LPM_TRIE(probe_lpm, struct { u32 prefixlen; u32 addr; }, u32, 16);
BPF_TABLE("lru_hash", u64, u64, probe_lru, 16);
BPF_RINGBUF_OUTPUT(probe_ring, 1);

int probe_xdp(struct xdp_md *ctx) { return XDP_PASS; }
int probe_tc(struct __sk_buff *skb) {
    u64 key = skb->len, *val = probe_lru.lookup(&key);
    return val ? 0 : 0;
}
int probe_cgroup_skb(struct __sk_buff *skb) { return 1; }
int probe_connect4(struct bpf_sock_addr *ctx) { return 1; }
int probe_tracepoint(void *ctx) {
    u32 one = 1;
    probe_ring.ringbuf_output(&one, sizeof(one), 0);
    return 0;
}
"""


def _kernel_check() -> Check:
    release = platform.release()
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        return Check("kernel", "warn", f"cannot parse kernel release {release}")
    if (major, minor) < (5, 8):
        return Check("kernel", "fail", f"Linux {release}", "the workbench needs Linux >= 5.8 (ring buffers)")
    return Check("kernel", "ok", f"Linux {release}")


def _btf_check() -> Check:
    if Path("/sys/kernel/btf/vmlinux").exists():
        return Check("btf", "ok", "/sys/kernel/btf/vmlinux present", required=False)
    return Check("btf", "warn", "no kernel BTF", "a kernel with CONFIG_DEBUG_INFO_BTF=y", required=False)


def _jit_check() -> Check:
    path = Path("/proc/sys/net/core/bpf_jit_enable")
    if not path.exists():
        return Check("bpf-jit", "warn", "bpf_jit_enable not present", required=False)
    value = path.read_text().strip()
    if value == "0":
        return Check("bpf-jit", "warn", "JIT disabled", "sysctl -w net.core.bpf_jit_enable=1", required=False)
    return Check("bpf-jit", "ok", f"net.core.bpf_jit_enable={value}", required=False)


def _privilege_check() -> Check:
    missing = system.missing_capabilities()
    if missing:
        return Check(
            "privileges", "fail", f"missing {', '.join(missing)} (uid {os.geteuid()})",
            "run as root or grant CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN",
        )
    return Check("privileges", "ok", f"uid {os.geteuid()} with CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN")


def _mount_checks() -> list[Check]:
    mounts = system.mounted_fs()
    checks = []
    for name, path, fstype, fix in (
        ("bpffs", system.BPFFS, "bpf", f"mount -t bpf bpf {system.BPFFS}"),
        ("tracefs", system.TRACEFS, "tracefs", f"mount -t tracefs tracefs {system.TRACEFS}"),
    ):
        if mounts.get(str(path)) == fstype:
            checks.append(Check(name, "ok", f"mounted at {path}"))
        else:
            checks.append(Check(name, "fail", f"not mounted at {path}", f"{fix}, or {system.SETUP_HINT}"))
    root = system.cgroup2_root()
    if root:
        checks.append(Check("cgroup2", "ok", f"mounted at {root}"))
    else:
        checks.append(Check("cgroup2", "fail", "no cgroup2 mount", system.SETUP_HINT))
    return checks


def _bcc_check() -> Check:
    try:
        import bcc
    except ImportError as err:
        return Check("bcc", "fail", f"not importable: {err}", "apt-get install python3-bpfcc; " + system.SETUP_HINT)
    version = getattr(bcc, "__version__", "unknown")
    return Check("bcc", "ok", f"python3-bpfcc {version}")


def _bpf_syscall_check() -> Check:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    nr_bpf = 321  # x86_64
    # BPF_PROG_GET_NEXT_ID with a zeroed attr: answers ENOENT/0 when bpf() exists, ENOSYS when not.
    attr = ctypes.create_string_buffer(16)
    ret = libc.syscall(nr_bpf, 11, attr, 16)
    err = ctypes.get_errno()
    if ret < 0 and err == 38:
        return Check("bpf-syscall", "fail", "bpf() is not implemented", "a kernel with CONFIG_BPF_SYSCALL=y")
    if ret < 0 and err == 1:
        return Check("bpf-syscall", "fail", "bpf() denied (EPERM)", "run as root or with CAP_BPF")
    return Check("bpf-syscall", "ok", "bpf() available")


@contextmanager
def _scratch_netns() -> Iterator[tuple[str, int]]:
    """A throwaway netns with a veth pair up; yields (netns, index of the first end)."""
    from pyroute2 import IPRoute

    name = f"{system.NETNS_PREFIX}preflight-{uuid.uuid4().hex[:8]}"
    try:
        netlink.create_netns(name)
        with IPRoute(netns=name) as ipr:
            ipr.link("add", ifname="pf0", kind="veth", peer={"ifname": "pf1"})
            for ifname in ("pf0", "pf1"):
                ipr.link("set", index=netlink.link_index(ipr, ifname), state="up")
            yield name, netlink.link_index(ipr, "pf0")
    finally:
        netlink.remove_netns(name)


@contextmanager
def _scratch_cgroup() -> Iterator[Path]:
    root = system.cgroup2_root()
    if root is None:
        raise RuntimeError("no cgroup2 mount")
    path = root / system.CGROUP_PARENT / f"preflight-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        path.rmdir()
        try:
            path.parent.rmdir()  # the shared parent only when nothing else lives there
        except OSError:
            pass


def _attach_checks() -> list[Check]:
    """Compile once, then load and attach each program type the workbench uses."""
    from bcc import BPF, BPFAttachType
    from pyroute2 import IPRoute

    checks: list[Check] = []
    try:
        bpf = BPF(text=PROBE_PROGRAM)
    except Exception as err:  # BCC raises bare Exception on compile failure
        return [Check("kernel-headers", "fail", f"BCC cannot compile a tiny program: {err}", system.SETUP_HINT)]
    checks.append(Check("kernel-headers", "ok", f"BCC compiled a probe program against {system.kernel_headers_dir()}"))
    with ExitStack() as cleanup:
        cleanup.callback(bpf.cleanup)
        for map_name, label in (("probe_lpm", "map:lpm-trie"), ("probe_lru", "map:lru-hash"), ("probe_ring", "map:ringbuf")):
            table = bpf[map_name]
            checks.append(Check(label, "ok", f"created ({type(table).__name__})"))

        def attempt(label: str, action: Callable[[], str], required: bool = True) -> None:
            try:
                checks.append(Check(label, "ok", action(), required=required))
            except Exception as err:
                checks.append(Check(label, "fail" if required else "warn", f"{type(err).__name__}: {err}",
                                    "see docs/architecture.md (What the node needs)", required=required))

        ns, index = cleanup.enter_context(_scratch_netns())
        xdp_fn = bpf.load_func("probe_xdp", BPF.XDP)
        tc_fn = bpf.load_func("probe_tc", BPF.SCHED_CLS)

        def xdp(mode_flag: int, mode: str) -> str:
            with netlink.in_netns(ns):
                bpf.attach_xdp("pf0", xdp_fn, mode_flag)
                bpf.remove_xdp("pf0", mode_flag)
            return f"attached in {mode} mode to a veth"

        attempt("prog:xdp-generic", lambda: xdp(BPF.XDP_FLAGS_SKB_MODE, "generic"))
        attempt("prog:xdp-native", lambda: xdp(BPF.XDP_FLAGS_DRV_MODE, "native (veth driver)"), required=False)

        def tc() -> str:
            with IPRoute(netns=ns) as ipr:
                netlink.ensure_clsact(ipr, index)
                for parent in (netlink.CLSACT_INGRESS, netlink.CLSACT_EGRESS):
                    ipr.tc("add-filter", "bpf", index, ":1", fd=tc_fn.fd, name=tc_fn.name,
                           parent=parent, classid=1, direct_action=True)
            return "clsact ingress and egress filters attached"

        attempt("prog:tc-clsact", tc)
        cgroup = cleanup.enter_context(_scratch_cgroup())

        def cgroup_attach(func: str, prog_type: int, attach_type: int, label: str) -> str:
            fn = bpf.load_func(func, prog_type, attach_type=attach_type)
            fd = os.open(cgroup, os.O_RDONLY)
            try:
                BPF.attach_func(fn, fd, attach_type)
                BPF.detach_func(fn, fd, attach_type)
            finally:
                os.close(fd)
            return f"{label} attached to a cgroup"

        attempt("prog:cgroup-skb", lambda: cgroup_attach(
            "probe_cgroup_skb", BPF.CGROUP_SKB, BPFAttachType.CGROUP_INET_EGRESS, "cgroup/skb egress"))
        attempt("prog:cgroup-sock-addr", lambda: cgroup_attach(
            "probe_connect4", BPF.CGROUP_SOCK_ADDR, BPFAttachType.CGROUP_INET4_CONNECT, "cgroup/connect4"))

        def tracepoint() -> str:
            bpf.attach_tracepoint(tp="sock:inet_sock_set_state", fn_name="probe_tracepoint")
            return "sock:inet_sock_set_state attached"

        attempt("prog:tracepoint", tracepoint)
    return checks


@netlink.off_event_loop
def run_preflight() -> Report:
    """Run every check. Privileged checks are skipped (as fail) without privileges.

    Example::

        >>> report = run_preflight()
        >>> report.ok
        True
    """
    checks = [_kernel_check(), _btf_check(), _jit_check(), _privilege_check(), *_mount_checks(), _bcc_check()]
    privileged = checks[3].status == "ok"
    checks.append(_bpf_syscall_check() if privileged else Check(
        "bpf-syscall", "fail", "not tried without privileges", "run as root"))
    ready = privileged and all(c.status == "ok" for c in checks if c.name in ("bpffs", "bcc", "cgroup2"))
    if ready:
        checks.extend(_attach_checks())
    else:
        checks.append(Check("programs", "fail", "program and map loads not tried",
                            "fix the failures above first"))
    return Report(checks)
