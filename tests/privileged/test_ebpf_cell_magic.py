"""`%%ebpf` cells on the real kernel: compile, attach, replace, maps as DataFrames, failures, teardown.

Topology per test: two namespaces joined by a veth pair, wb-<t>-a (10.99.0.1, eth "a0")
and wb-<t>-b (10.99.0.2, eth "b0"); programs attach to b0. Pings go from a to b only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from workbench import system
from workbench.notebook import programs

A_IP, B_IP = "10.99.0.1", "10.99.0.2"

XDP_COUNT = """\
BPF_ARRAY(counts, u64, 1);

int xdp_count(struct xdp_md *ctx) {
    int key = 0;
    u64 *value = counts.lookup(&key);
    if (value)
        __sync_fetch_and_add(value, 1);
    return XDP_PASS;
}
"""

XDP_DROP_ICMP = """\
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>

int guard(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != htons(ETH_P_IP))
        return XDP_PASS;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end)
        return XDP_PASS;
    return ip->protocol == IPPROTO_ICMP ? VERDICT : XDP_PASS;
}
"""

TC_COUNT = """\
BPF_HASH(bytes_by_proto, u32, u64);

int tc_count(struct __sk_buff *skb) {
    u32 proto = skb->protocol;
    u64 zero = 0, *total = bytes_by_proto.lookup_or_try_init(&proto, &zero);
    if (total)
        __sync_fetch_and_add(total, skb->len);
    return TC_ACT_OK;
}
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


# This machine has no ping(8): ICMP echo over a raw socket, exit 0 when every request got its reply.
PING = """
import os, socket, struct, sys, time
dst, count = sys.argv[1], int(sys.argv[2])
def checksum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.settimeout(1.0)
ident, ok = os.getpid() & 0xffff, 0
for seq in range(count):
    hdr = struct.pack('!BBHHH', 8, 0, 0, ident, seq) + b'workbench'
    hdr = hdr[:2] + struct.pack('!H', checksum(hdr + b'\\0')) + hdr[4:]
    sock.sendto(hdr, (dst, 0))
    deadline = time.time() + 1.0
    while time.time() < deadline:
        try:
            data = sock.recv(1500)
        except socket.timeout:
            break
        icmp = data[(data[0] & 15) * 4:]
        if icmp[0] == 0 and struct.unpack('!HH', icmp[4:8]) == (ident, seq):
            ok += 1
            break
sys.exit(0 if ok == count else 1)
"""


def ping(ns: str, count: int = 3) -> bool:
    """ICMP echo from netns ``ns`` to B_IP; True when all ``count`` replies came back."""
    return sh("ip", "netns", "exec", ns, sys.executable, "-c", PING, B_IP, str(count), check=False).returncode == 0


@pytest.fixture(scope="module")
def ip():
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "workbench")
    return shell


@pytest.fixture
def pair(netns_factory) -> Iterator[tuple[str, str]]:
    """Two netns joined by a veth pair; programs are detached before the netns go."""
    a, b = netns_factory("ca"), netns_factory("cb")
    sh("ip", "link", "add", "a0", "netns", a, "type", "veth", "peer", "name", "b0", "netns", b)
    sh("ip", "-n", a, "addr", "add", f"{A_IP}/24", "dev", "a0")
    sh("ip", "-n", b, "addr", "add", f"{B_IP}/24", "dev", "b0")
    sh("ip", "-n", a, "link", "set", "a0", "up")
    sh("ip", "-n", b, "link", "set", "b0", "up")
    try:
        yield a, b
    finally:
        programs.manager().detach_all()


@pytest.fixture
def cgroup() -> Iterator[Path]:
    from workbench.inventory import remove_cgroup_tree

    root = system.cgroup2_root()
    assert root is not None
    parent = root / system.CGROUP_PARENT
    created_parent = not parent.exists()
    path = parent / f"t{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        programs.manager().detach_all()
        remove_cgroup_tree(path)
        if created_parent:
            try:
                parent.rmdir()
            except OSError:
                pass


def counts(prog, table: str = "counts") -> int:
    frame = prog.maps[table].to_frame()
    return int(frame["value"].sum()) if not frame.empty else 0


def test_xdp_counter_counts_real_pings(ip, pair):
    a, b = pair
    prog = ip.run_cell_magic("ebpf", f"xdp --dev b0 --netns {b}", XDP_COUNT)
    assert prog.name == "xdp_count" and prog.kind == "xdp"
    assert ping(a, 3)
    frame = prog.maps["counts"].to_frame()
    assert list(frame.columns) == ["key", "value"]
    assert frame["key"].tolist() == [0] and isinstance(frame["value"][0], int | type(frame["value"][0]))
    assert int(frame["value"][0]) >= 3
    html = prog._repr_html_()
    assert "xdp_count" in html and "counts" in html and b in html
    listing = ip.run_line_magic("ebpf", "programs")
    assert listing["name"].tolist() == ["xdp_count"] and listing["prog_id"][0] == prog.prog_id
