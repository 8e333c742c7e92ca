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

from tests.waiting import wait_until
from workbench.node import system
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

int icmp_guard(struct xdp_md *ctx) {
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
#include <uapi/linux/pkt_cls.h>

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
    from workbench.node.inventory import remove_cgroup_tree

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


def xdp_attached_ids(ns: str, dev: str) -> list[int]:
    """Program ids attached as XDP to ``dev``, as ip(8) reports them (an observer independent of the code)."""
    import json

    out = json.loads(sh("ip", "-n", ns, "-j", "link", "show", dev).stdout)[0]
    xdp = out.get("xdp") or {}
    return [int(entry["prog"]["id"]) for entry in xdp.get("attached", [])]


def test_xdp_drop_then_rerun_with_pass_restores_ping_atomically(ip, pair):
    a, b = pair
    assert ping(a, 1)
    dropper = ip.run_cell_magic("ebpf", f"xdp --dev b0 --netns {b} -D VERDICT=XDP_DROP", XDP_DROP_ICMP)
    assert not ping(a, 1)
    assert xdp_attached_ids(b, "b0") == [dropper.prog_id]
    passer = ip.run_cell_magic("ebpf", f"xdp --dev b0 --netns {b} -D VERDICT=XDP_PASS", XDP_DROP_ICMP)
    assert passer.prog_id != dropper.prog_id
    assert ping(a, 2)
    assert xdp_attached_ids(b, "b0") == [passer.prog_id]
    assert programs.manager().names() == ["icmp_guard"]


def test_tc_egress_counter_sees_the_replies(ip, pair):
    a, b = pair
    prog = ip.run_cell_magic("ebpf", f"tc --direction egress --dev b0 --netns {b} --name replies", TC_COUNT)
    assert prog.name == "replies" and prog.function == "tc_count"
    assert ping(a, 3)
    frame = prog.maps["bytes_by_proto"].to_frame()
    ipv4 = frame[frame["key"] == 0x0008]        # skb->protocol is network order: ETH_P_IP read on little endian
    # Each echo reply: 14 (Ethernet) + 20 (IPv4) + 8 (ICMP) + 9 bytes of payload.
    assert not ipv4.empty and int(ipv4["value"].iloc[0]) >= 3 * 51
    filters = sh("tc", "-n", b, "filter", "show", "dev", "b0", "egress").stdout
    assert filters.count("wb-user-replies") == 1 and f"id {prog.prog_id} " in filters
    again = ip.run_cell_magic("ebpf", f"tc --direction egress --dev b0 --netns {b} --name replies", TC_COUNT)
    filters = sh("tc", "-n", b, "filter", "show", "dev", "b0", "egress").stdout
    assert filters.count("wb-user-replies") == 1 and f"id {again.prog_id} " in filters   # replaced at its prio
    assert again.attachment.prio == prog.attachment.prio
    ip.run_line_magic("ebpf", "detach replies")
    assert "wb-user-replies" not in sh("tc", "-n", b, "filter", "show", "dev", "b0", "egress").stdout


CGROUP_COUNT = """\
#include <uapi/linux/if_ether.h>

BPF_ARRAY(packets, u64, 2);

int cg_count(struct __sk_buff *skb) {
    int key = skb->protocol == htons(ETH_P_IP) ? 0 : 1;
    u64 *value = packets.lookup(&key);
    if (value)
        __sync_fetch_and_add(value, 1);
    return 1;   /* allow */
}
"""


def test_cgroup_skb_counts_traffic_of_a_process_in_the_cgroup(ip, pair, cgroup):
    a, _ = pair
    prog = ip.run_cell_magic("ebpf", f"cgroup_skb --direction egress --cgroup {cgroup}", CGROUP_COUNT)
    assert prog.target.startswith(str(cgroup))
    assert ping(a, 2)                           # this ping's process is not in the cgroup
    assert counts(prog, "packets") == 0
    script = f"echo $$ > {cgroup}/cgroup.procs && exec ip netns exec {a} {sys.executable} -c \"$0\" {B_IP} 3"
    assert subprocess.run(["sh", "-c", script, PING], capture_output=True).returncode == 0
    frame = prog.maps["packets"].to_frame()
    assert frame["key"].tolist() == [0, 1] and int(frame["value"][0]) >= 3
    assert cgroup_prog_ids(cgroup) == [prog.prog_id]
    again = ip.run_cell_magic("ebpf", f"cgroup_skb --direction egress --cgroup {cgroup}", CGROUP_COUNT)
    assert cgroup_prog_ids(cgroup) == [again.prog_id]     # the new one attached, then the old one detached


def cgroup_prog_ids(path: Path) -> list[int]:
    import json

    return [int(p["id"]) for p in json.loads(sh("bpftool", "-j", "cgroup", "show", str(path)).stdout or "[]")]


TCP_STATES = """\
#include <uapi/linux/in.h>

BPF_HASH(states, u32, u64);

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != IPPROTO_TCP)
        return 0;
    u32 state = args->newstate;
    states.increment(state);
    return 0;
}
"""


def test_tracepoint_on_tcp_state_changes_into_a_dataframe(ip, pair):
    a, _ = pair
    prog = ip.run_cell_magic("ebpf", "tracepoint sock:inet_sock_set_state --name tcp_states", TCP_STATES)
    assert prog.target == "sock:inet_sock_set_state"
    # A TCP connect to a closed port inside the test netns: SYN_SENT (2) then CLOSE (7).
    connect = "import socket; s = socket.socket(); s.settimeout(1); print(s.connect_ex(('10.99.0.2', 9)))"
    sh("ip", "netns", "exec", a, sys.executable, "-c", connect)
    frame = prog.maps["states"].to_frame()
    seen = dict(zip(frame["key"], frame["value"], strict=True))
    assert seen.get(2, 0) >= 1 and seen.get(7, 0) >= 1
    # Re-running replaces it: still one program, and the old perf attachment is gone.
    again = ip.run_cell_magic("ebpf", "tracepoint sock:inet_sock_set_state --name tcp_states", TCP_STATES)
    assert programs.manager().names() == ["tcp_states"] and again.prog_id != prog.prog_id
    assert prog.bpf.module is None


PLAIN_TRACEPOINT = """\
BPF_ARRAY(calls, u64, 1);

int on_state(void *ctx) {
    int key = 0;
    u64 *n = calls.lookup(&key);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}
"""


def test_tracepoint_with_a_plain_function_is_attached_by_name(ip, pair):
    a, _ = pair
    prog = ip.run_cell_magic("ebpf", "tracepoint sock:inet_sock_set_state", PLAIN_TRACEPOINT)
    assert prog.name == "on_state" and prog.target == "sock:inet_sock_set_state"
    connect = "import socket; s = socket.socket(); s.settimeout(1); s.connect_ex(('10.99.0.2', 9))"
    sh("ip", "netns", "exec", a, sys.executable, "-c", connect)
    assert counts(prog, "calls") >= 2
    with pytest.raises(UsageError, match="no tracepoint sock:no_such_event"):
        ip.run_cell_magic("ebpf", "tracepoint sock:no_such_event --name other", PLAIN_TRACEPOINT)
    assert programs.manager().names() == ["on_state"]


def test_compile_error_names_the_cell_line_and_keeps_the_previous_program(ip, pair):
    a, b = pair
    prog = ip.run_cell_magic("ebpf", f"xdp --dev b0 --netns {b}", XDP_COUNT)
    broken = XDP_COUNT.replace("return XDP_PASS;", "return XDP_PASS + no_such_name;")
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("ebpf", f"xdp --dev b0 --netns {b}", broken)
    text = str(err.value)
    first = text.splitlines()[0]
    assert first.startswith("compile error at cell line 8") and "no_such_name" in first
    assert "cell line 8, col" in text and "/virtual/main.c" not in text
    assert programs.manager().get("xdp_count") is prog
    assert xdp_attached_ids(b, "b0") == [prog.prog_id]
    before = counts(prog)
    assert ping(a, 2)
    assert counts(prog) >= before + 2


OUT_OF_BOUNDS = """\
BPF_ARRAY(counts, u64, 1);

int xdp_count(struct xdp_md *ctx) {
    unsigned char *data = (void *)(long)ctx->data;
    return data[100] == 1 ? XDP_DROP : XDP_PASS;
}
"""


def test_verifier_rejection_shows_the_log_and_keeps_the_previous_program(ip, pair):
    a, b = pair
    prog = ip.run_cell_magic("ebpf", f"xdp --dev b0 --netns {b}", XDP_COUNT)
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("ebpf", f"xdp --dev b0 --netns {b}", OUT_OF_BOUNDS)
    text = str(err.value)
    assert text.splitlines()[0].startswith("verifier rejected xdp_count as xdp:")
    assert "invalid access to packet" in text and "(cell line 5)" in text
    assert xdp_attached_ids(b, "b0") == [prog.prog_id]
    assert ping(a, 1)


@pytest.mark.parametrize("line, message", [
    ("xdp --dev b0 --netns {b} --frobnicate", "unrecognized arguments: --frobnicate"),
    ("xdp --dev nosuchdev --netns {b}", "no device 'nosuchdev' in netns"),
    ("tc --direction ingress --dev b0 --netns {b}", "is a xdp program by its context argument"),
    ("xdp --dev b0", "never attach in the machine's own netns"),
    ("xdp --pod deathstar --lab nosuchlab", "pod 'deathstar': lab nosuchlab is not up"),
    ("xdp --mode native --dev b0 --netns {b}", "re-run with --mode skb"),
    ("xdp --dev b0 --netns {b} --name other", "already runs XDP program 'xdp_count'"),
    ("tracepoint sock:inet_sock_set_state", "cannot attach as tracepoint"),
])
def test_bad_input_is_one_line_and_changes_nothing(ip, pair, line, message):
    a, b = pair
    prog = ip.run_cell_magic("ebpf", f"xdp --dev b0 --netns {b}", XDP_COUNT)
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("ebpf", line.format(b=b), XDP_COUNT)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert programs.manager().names() == ["xdp_count"]
    assert xdp_attached_ids(b, "b0") == [prog.prog_id]
    assert ping(a, 1) and counts(prog) >= 1


def test_cgroups_outside_the_workbench_tree_are_refused(ip):
    root = system.cgroup2_root()
    with pytest.raises(UsageError, match=f"--cgroup {root}: only cgroups under {root}/wb take user programs"):
        ip.run_cell_magic("ebpf", f"cgroup_skb --direction egress --cgroup {root}", CGROUP_COUNT)
    assert programs.manager().names() == []


def test_programs_listing_and_detach(ip, pair):
    a, b = pair
    ip.run_cell_magic("ebpf", f"xdp --dev b0 --netns {b}", XDP_COUNT)
    ip.run_cell_magic("ebpf", f"tc --direction egress --dev b0 --netns {b}", TC_COUNT)
    listing = ip.run_line_magic("ebpf", "programs")
    assert listing["name"].tolist() == ["xdp_count", "tc_count"]
    assert list(listing.columns) == ["name", "type", "target", "function", "attached_at", "pinned", "prog_id"]
    assert listing["type"].tolist() == ["xdp", "tc egress"] and not listing["pinned"].any()
    with pytest.raises(UsageError, match="no program 'nope'.*xdp_count, tc_count"):
        ip.run_line_magic("ebpf", "detach nope")
    ip.run_line_magic("ebpf", "detach xdp_count")
    assert xdp_attached_ids(b, "b0") == []
    assert ip.run_line_magic("ebpf", "programs")["name"].tolist() == ["tc_count"]


def test_pinned_program_outlives_its_kernel_and_a_new_kernel_replaces_and_detaches_it(ip, pair):
    a, b = pair
    pins = programs.USER_PIN_DIR / "pinned_counter"
    line = f"xdp --dev b0 --netns {b} --pin --name pinned_counter"
    script = f"""
from IPython.testing.globalipapp import get_ipython
ip = get_ipython()
ip.run_line_magic("load_ext", "workbench")
print("prog_id", ip.run_cell_magic("ebpf", {line!r}, {XDP_COUNT!r}).prog_id)
"""
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert "prog_id" in proc.stdout, proc.stderr
        first_id = int(proc.stdout.split()[-1])
        # That kernel has exited; the program is still attached and still counting, through its pins.
        assert xdp_attached_ids(b, "b0") == [first_id]
        assert (pins / "prog").exists() and (pins / "counts").exists()
        assert ping(a, 2)
        dump = sh("bpftool", "-j", "map", "dump", "pinned", str(pins / "counts")).stdout
        assert '"value": 0' not in dump and "value" in dump
        listing = ip.run_line_magic("ebpf", "programs")
        row = listing.set_index("name").loc["pinned_counter"]
        assert bool(row["pinned"]) and int(row["prog_id"]) == first_id and row["target"] == f"{b}/b0"
        # Re-running the cell in this kernel swaps the program in place and keeps it pinned.
        again = ip.run_cell_magic("ebpf", line, XDP_COUNT)
        assert xdp_attached_ids(b, "b0") == [again.prog_id] and again.prog_id != first_id
        assert (pins / "prog").exists() and again.pinned
        ip.run_line_magic("ebpf", "detach pinned_counter")
        assert xdp_attached_ids(b, "b0") == [] and not pins.exists()
        assert not programs.RECORDS_DIR.exists() or not any(programs.RECORDS_DIR.iterdir())
    finally:
        sh("ip", "-n", b, "link", "set", "b0", "xdpgeneric", "off", check=False)
        programs._unpin("pinned_counter")
        programs._drop_record("pinned_counter")


def test_kernel_exit_detaches_everything_not_pinned(pair):
    """A separate IPython process attaches XDP and TC, then exits: both are gone afterwards."""
    a, b = pair
    script = f"""
from IPython.testing.globalipapp import get_ipython
ip = get_ipython()
ip.run_line_magic("load_ext", "workbench")
ip.run_cell_magic("ebpf", "xdp --dev b0 --netns {b}", {XDP_COUNT!r})
ip.run_cell_magic("ebpf", "tc --direction ingress --dev b0 --netns {b}", {TC_COUNT!r})
print("attached")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "attached" in proc.stdout, proc.stderr
    assert xdp_attached_ids(b, "b0") == []
    assert "wb-user" not in sh("tc", "-n", b, "filter", "show", "dev", "b0", "ingress").stdout


def test_without_privileges_one_line_and_nothing_attached(pair):
    a, b = pair
    script = f"""
from IPython.testing.globalipapp import get_ipython
from IPython.core.error import UsageError
ip = get_ipython()
ip.run_line_magic("load_ext", "workbench")
try:
    ip.run_cell_magic("ebpf", "xdp --dev b0 --netns {b}", {XDP_COUNT!r})
except UsageError as err:
    print("USAGE:", err)
"""
    proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c",
                           script], capture_output=True, text=True, timeout=120, cwd="/")
    assert "USAGE: %%ebpf needs root" in proc.stdout, proc.stdout + proc.stderr
    assert xdp_attached_ids(b, "b0") == []


def test_live_view_refreshes_in_place_and_stops(ip, pair):
    a, b = pair
    prog = ip.run_cell_magic("ebpf", f"xdp --dev b0 --netns {b}", XDP_COUNT)
    view = prog.maps["counts"].live(interval=0.1)
    try:
        first = view.html.value
        assert ping(a, 2)
        deadline = time.time() + 5
        while view.html.value == first and time.time() < deadline:
            time.sleep(0.05)
        assert view.html.value != first and view.refreshes >= 2
    finally:
        view.stop()
    assert not view.running
    frozen = view.refreshes
    time.sleep(0.3)
    assert view.refreshes == frozen


def test_pod_target_without_a_lab_is_a_clear_not_found():
    from workbench.errors import NotFoundError

    with pytest.raises(NotFoundError, match=f"pod 'deathstar': lab nolab{os.getpid()} is not up"):
        programs.resolve_pod_target("deathstar", lab=f"nolab{os.getpid()}")


POD_MANIFESTS = """\
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec: {containers: [{name: c, image: busybox}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec: {containers: [{name: c, image: nginx, ports: [{containerPort: 80}]}]}
"""


@pytest.fixture(scope="module")
def lab():
    import workbench as wb

    name = f"m{uuid.uuid4().hex[:4]}"
    lab = wb.Lab.up(POD_MANIFESTS, name=name)
    try:
        yield lab
    finally:
        programs.manager().detach_all()
        lab.down()


def curl_server(lab) -> str:
    server_ip = lab.endpoints.set_index("pod").loc["server", "ipv4"]
    return lab.exec("client", f"curl -s -m 3 http://{server_ip}/").stdout


def test_pod_targets_the_pods_eth0_its_node_side_lxc_and_its_cgroup(ip, lab):
    ep = lab.call("endpoint.get", pod="server")
    xdp = ip.run_cell_magic("ebpf", f"xdp --pod server --lab {lab.name}", XDP_COUNT)
    assert xdp.target == f"{ep['netns']}/eth0"
    cg = ip.run_cell_magic("ebpf", f"cgroup_skb --direction egress --pod client --lab {lab.name}", CGROUP_COUNT)
    assert cg.target.startswith(lab.call("endpoint.get", pod="client")["cgroup"])
    tc = ip.run_cell_magic("ebpf", f"tc --direction ingress --pod server --lxc --lab {lab.name}", TC_COUNT)
    assert tc.target == f"wb-{lab.name}-node/{ep['lxc']} ingress"
    try:
        assert '"pod": "server"' in curl_server(lab)
        assert counts(xdp) >= 3                          # SYN, ACK, request, ... arrive at the server's eth0
        assert counts(cg, "packets") >= 3                # the client's curl runs in the client's cgroup
        filters = sh("tc", "-n", f"wb-{lab.name}-node", "filter", "show", "dev", ep["lxc"], "ingress").stdout
        assert "wb-user-tc_count" in filters
    finally:
        for name in ("xdp_count", "cg_count", "tc_count"):
            ip.run_line_magic("ebpf", f"detach {name}")
    assert "wb-user" not in sh("tc", "-n", f"wb-{lab.name}-node", "filter", "show", "dev", ep["lxc"], "ingress").stdout
    assert '"pod": "server"' in curl_server(lab)          # the lab's own datapath is untouched


def test_missing_pod_lists_the_lab_pods(ip, lab):
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("ebpf", f"xdp --pod nosuchpod --lab {lab.name}", XDP_COUNT)
    assert "nosuchpod" in str(err.value) and "client" in str(err.value) and "\n" not in str(err.value)
    assert programs.manager().names() == []


CONNECT4 = """\
struct dest {
    u32 addr;
    u16 port;
    u16 pad;
};
BPF_HASH(connects, struct dest, u64);
BPF_PERCPU_ARRAY(calls, u64, 1);

int on_connect(struct bpf_sock_addr *ctx) {
    struct dest d = {.addr = ctx->user_ip4, .port = ntohs(ctx->user_port)};
    connects.increment(d);
    int zero = 0;
    u64 *n = calls.lookup(&zero);
    if (n)
        *n += 1;
    return 1;
}
"""


def test_connect4_struct_keys_and_percpu_values_as_columns(pair, cgroup):
    """Also run from inside a running asyncio loop, as ipykernel runs cells."""
    import asyncio

    a, _ = pair
    from workbench.notebook.cellargs import parse_cell_line

    async def in_kernel_loop():
        return programs.manager().load(parse_cell_line(f"connect4 --cgroup {cgroup}"), CONNECT4)

    prog = asyncio.run(in_kernel_loop())
    connect = "import socket; s = socket.socket(); s.settimeout(1); s.connect_ex(('10.99.0.2', 9))"
    script = f"echo $$ > {cgroup}/cgroup.procs && exec ip netns exec {a} {sys.executable} -c \"$0\""
    for _ in range(2):
        subprocess.run(["sh", "-c", script, connect], check=True)
    frame = prog.maps["connects"].to_frame()
    assert list(frame.columns) == ["addr", "port", "pad", "value"]
    assert frame[["addr", "port", "value"]].values.tolist() == [[0x0200630A, 9, 2]]   # 10.99.0.2 as read natively
    summed = prog.maps["calls"].to_frame()
    assert summed.values.tolist() == [[0, 2]]
    per_cpu = prog.maps["calls"].to_frame(percpu="columns")
    assert per_cpu.columns[1] == "value.cpu0" and int(per_cpu.iloc[0, 1:].sum()) == 2


RAW_SWITCHES = """\
BPF_ARRAY(switches, u64, 1);

int on_switch(struct bpf_raw_tracepoint_args *ctx) {
    int key = 0;
    u64 *n = switches.lookup(&key);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}
"""


def test_raw_tracepoint_counts_and_detaches(ip):
    prog = ip.run_cell_magic("ebpf", "raw_tracepoint sched_switch", RAW_SWITCHES)
    wait_until(lambda: counts(prog, "switches") > 0, 10, "a counted sched_switch")
    ip.run_line_magic("ebpf", "detach on_switch")
    assert programs.manager().names() == []


def test_in_a_real_kernel_errors_are_usage_errors_without_traceback(pair, tmp_path):
    """A workbench Jupyter kernel (asyncio loop running): attach, break the cell, see one clean error."""
    from jupyter_client.manager import start_new_kernel

    a, b = pair
    subprocess.run([sys.executable, "-m", "workbench", "kernel", "install", "--prefix", str(tmp_path)],
                   check=True, capture_output=True)
    env = dict(os.environ, JUPYTER_PATH=str(tmp_path / "share" / "jupyter"))
    km, kc = start_new_kernel(kernel_name="ebpf-workbench", env=env)
    outputs: list[dict] = []
    try:
        ok = kc.execute_interactive(f"%%ebpf xdp --dev b0 --netns {b}\n{XDP_COUNT}", timeout=120)
        assert ok["content"]["status"] == "ok"
        assert ping(a, 2)
        check = kc.execute_interactive("from workbench.notebook.programs import manager\n"
                                       "assert int(manager().get('xdp_count').maps['counts'].to_frame()"
                                       "['value'][0]) >= 2", timeout=60)
        assert check["content"]["status"] == "ok"
        broken = XDP_COUNT.replace("return XDP_PASS;", "return XDP_PASS +;")
        reply = kc.execute_interactive(f"%%ebpf xdp --dev b0 --netns {b}\n{broken}", timeout=120,
                                       output_hook=outputs.append)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "UsageError"
        shown = "\n".join(str(m["content"]) for m in outputs)
        assert "compile error at cell line 8" in shown and "Traceback" not in shown
        assert len(xdp_attached_ids(b, "b0")) == 1
        km.shutdown_kernel(now=False)               # a normal shutdown runs the kernel's exit hooks
        deadline = time.time() + 20
        while xdp_attached_ids(b, "b0") and time.time() < deadline:
            time.sleep(0.2)
        assert xdp_attached_ids(b, "b0") == []
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)
