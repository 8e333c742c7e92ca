"""The lxc datapath on the real kernel: real netns, real TC programs, real packets.

Topology (workbench.datapath.testbed): node netns + pods a, b, c (identities
300, 301, 302) with echo servers on b (TCP 80, 81, 8080-8084; UDP 53, 54) and
on c (TCP 80). Each scenario applies a policy through the PolicyMapWriter and
probes with real connections; drops are checked both as failed connections
and as the datapath's drop counter for the expected Cilium reason.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest

from tests.waiting import wait_until
from workbench.datapath import abi
from workbench.datapath.loader import Datapath
from workbench.datapath.ringreader import RingReader
from workbench.datapath.testbed import Testbed
from workbench.errors import ValidationError
from workbench.lab.model import PolicyEntry
from workbench.node import netlink
from workbench.policy.compiler import live_edit, map_entries
from workbench.policy.ports import port_blocks

A, B, C = 300, 301, 302
TCP, UDP = 6, 17
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def lab_name() -> str:
    return f"t{uuid.uuid4().hex[:7]}"


def start_servers(bed: Testbed) -> None:
    for port in (80, 81, 8080, 8081, 8082, 8083, 8084):
        bed.serve("b", port)
    for port in (53, 54):
        bed.serve("b", port, "udp")
    bed.serve("c", 80)
    bed.serve("a", 80)


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    tb = Testbed.create(lab_name(), {"a": A, "b": B, "c": C})
    try:
        start_servers(tb)
        yield tb
    finally:
        tb.destroy()


@pytest.fixture
def clean(bed: Testbed) -> Iterator[Testbed]:
    """The shared bed with no policy and no audit mode before and after the test."""
    bed.datapath.policy_writer().apply([], set())
    bed.datapath.set_audit(None, False)
    yield bed
    bed.datapath.policy_writer().apply([], set())
    bed.datapath.set_audit(None, False)


Drain = Callable[[Callable[[np.ndarray], bool], str], np.ndarray]


@contextmanager
def events(bed: Testbed) -> Iterator[Drain]:
    """The flow events from now on, read from the ring like the agent reads them.

    ``drain(until, what)`` reads the ring until ``until(all events so far)``
    holds (10 s deadline), so a test counts events only once the last one it
    expects (a connection's end, say) has arrived, however slow the machine.
    """
    with RingReader(bed.datapath.bpf[b"events"].map_fd) as reader:
        reader.drain()  # what earlier tests left
        seen: list[np.ndarray] = []

        def drain(until: Callable[[np.ndarray], bool], what: str) -> np.ndarray:
            def arrived() -> bool:
                seen.append(reader.drain())
                return bool(until(np.concatenate(seen)))

            wait_until(arrived, 10, what)
            return np.concatenate(seen)

        yield drain


def drop_count(bed: Testbed, reason: int, direction: str, verdict: str = "DROPPED") -> int:
    m = bed.datapath.metrics()
    rows = m[(m.verdict == verdict) & (m.drop_reason == reason) & (m.direction == direction)]
    return int(rows.packets.sum())


# ---- table-driven policy scenarios --------------------------------------------------------


@dataclass
class Probe:
    proto: str        # tcp | udp | icmp
    src: str
    dst: str
    port: int
    passes: bool
    reason: int = 0   # expected drop reason when not passing
    direction: str = "INGRESS"  # where the drop happens


@dataclass
class Scenario:
    name: str
    entries: Callable[[dict[str, int]], list[PolicyEntry]]
    enforced: Callable[[dict[str, int]], set[tuple[int, str]]]
    probes: list[Probe] = field(default_factory=list)


def _range(ep: int, direction: str, identity: int, proto: int, first: int, last: int) -> list[PolicyEntry]:
    return [PolicyEntry(ep, direction, identity, proto, p, pre) for p, pre in port_blocks(first, last)]  # type: ignore[arg-type]


SCENARIOS = [
    Scenario("no-policy-passes", lambda e: [], lambda e: set(), [
        Probe("tcp", "a", "b", 80, True), Probe("udp", "a", "b", 53, True), Probe("icmp", "a", "b", 0, True)]),
    Scenario("ingress-enforced-without-allow-drops-133", lambda e: [], lambda e: {(e["b"], "ingress")}, [
        Probe("tcp", "a", "b", 80, False, 133), Probe("udp", "a", "b", 53, False, 133),
        Probe("tcp", "a", "c", 80, True)]),
    Scenario("l3-allow-by-identity", lambda e: [PolicyEntry(e["b"], "ingress", A, 0, 0, 0)],
             lambda e: {(e["b"], "ingress")}, [
        Probe("tcp", "a", "b", 80, True), Probe("udp", "a", "b", 53, True), Probe("icmp", "a", "b", 0, True),
        Probe("tcp", "c", "b", 80, False, 133)]),
    Scenario("l4-port-allow-other-port-dropped", lambda e: [PolicyEntry(e["b"], "ingress", A, TCP, 80, 16)],
             lambda e: {(e["b"], "ingress")}, [
        Probe("tcp", "a", "b", 80, True), Probe("tcp", "a", "b", 81, False, 133),
        Probe("udp", "a", "b", 53, False, 133), Probe("tcp", "c", "b", 80, False, 133)]),
    Scenario("icmp-needs-l3-only", lambda e: [PolicyEntry(e["b"], "ingress", A, TCP, 80, 16)],
             lambda e: {(e["b"], "ingress")}, [
        Probe("icmp", "a", "b", 0, False, 133), Probe("tcp", "a", "b", 80, True)]),
    Scenario("port-range-as-prefix-blocks", lambda e: _range(e["b"], "ingress", 0, TCP, 8081, 8083),
             lambda e: {(e["b"], "ingress")}, [
        Probe("tcp", "a", "b", 8081, True), Probe("tcp", "c", "b", 8082, True), Probe("tcp", "a", "b", 8083, True),
        Probe("tcp", "a", "b", 8080, False, 133), Probe("tcp", "a", "b", 8084, False, 133)]),
    Scenario("udp-port-allow", lambda e: [PolicyEntry(e["b"], "ingress", A, UDP, 53, 16)],
             lambda e: {(e["b"], "ingress")}, [
        Probe("udp", "a", "b", 53, True), Probe("udp", "a", "b", 54, False, 133),
        Probe("tcp", "a", "b", 80, False, 133)]),
    Scenario("deny-wins-over-allow-181", lambda e: [
        PolicyEntry(e["b"], "ingress", 0, 0, 0, 0), PolicyEntry(e["b"], "ingress", A, TCP, 80, 16, deny=True)],
        lambda e: {(e["b"], "ingress")}, [
        Probe("tcp", "a", "b", 80, False, 181), Probe("tcp", "a", "b", 81, True), Probe("tcp", "c", "b", 80, True)]),
    Scenario("l3-deny-shadows-more-specific-allow", lambda e: [
        PolicyEntry(e["b"], "ingress", A, TCP, 80, 16), PolicyEntry(e["b"], "ingress", A, 0, 0, 0, deny=True)],
        lambda e: {(e["b"], "ingress")}, [
        Probe("tcp", "a", "b", 80, False, 181), Probe("tcp", "c", "b", 80, False, 133)]),
    Scenario("deny-applies-without-enforcement", lambda e: [
        PolicyEntry(e["b"], "ingress", C, TCP, 80, 16, deny=True)], lambda e: set(), [
        Probe("tcp", "c", "b", 80, False, 181), Probe("tcp", "a", "b", 80, True), Probe("tcp", "c", "b", 81, True)]),
    Scenario("deny-and-default-deny-together", lambda e: [
        PolicyEntry(e["b"], "ingress", C, TCP, 80, 16, deny=True)],
        lambda e: {(e["b"], "ingress")}, [
        Probe("tcp", "c", "b", 80, False, 181), Probe("tcp", "a", "b", 80, False, 133)]),
    Scenario("l4-only-any-identity", lambda e: [PolicyEntry(e["b"], "ingress", 0, TCP, 81, 16)],
             lambda e: {(e["b"], "ingress")}, [
        Probe("tcp", "a", "b", 81, True), Probe("tcp", "c", "b", 81, True), Probe("tcp", "a", "b", 80, False, 133)]),
    Scenario("egress-enforced-allow-to-identity", lambda e: [PolicyEntry(e["a"], "egress", B, TCP, 80, 16)],
             lambda e: {(e["a"], "egress")}, [
        Probe("tcp", "a", "b", 80, True), Probe("tcp", "a", "c", 80, False, 133, "EGRESS"),
        Probe("tcp", "a", "b", 81, False, 133, "EGRESS"), Probe("tcp", "c", "b", 81, True)]),
    Scenario("egress-deny-181", lambda e: [
        PolicyEntry(e["a"], "egress", 0, 0, 0, 0), PolicyEntry(e["a"], "egress", C, 0, 0, 0, deny=True)],
        lambda e: {(e["a"], "egress")}, [
        Probe("tcp", "a", "c", 80, False, 181, "EGRESS"), Probe("tcp", "a", "b", 80, True)]),
    Scenario("replies-pass-into-an-enforced-endpoint", lambda e: [], lambda e: {(e["a"], "ingress")}, [
        Probe("tcp", "a", "b", 80, True), Probe("udp", "a", "b", 53, True), Probe("icmp", "a", "b", 0, True),
        Probe("tcp", "b", "a", 80, False, 133)]),
    Scenario("both-directions-enforced", lambda e: [
        PolicyEntry(e["a"], "egress", B, TCP, 80, 16), PolicyEntry(e["b"], "ingress", A, TCP, 80, 16)],
        lambda e: {(e["a"], "egress"), (e["b"], "ingress")}, [
        Probe("tcp", "a", "b", 80, True), Probe("tcp", "c", "b", 80, False, 133),
        Probe("tcp", "a", "b", 81, False, 133, "EGRESS")]),
    Scenario("any-protocol-port-means-tcp-and-udp", lambda e: [PolicyEntry(e["b"], "ingress", A, 0, 53, 16)],
             lambda e: {(e["b"], "ingress")}, [
        Probe("udp", "a", "b", 53, True), Probe("udp", "a", "b", 54, False, 133)]),
]


def run_probe(bed: Testbed, p: Probe) -> bool:
    # generous when a pass is expected (a busy machine must not fake a drop)
    timeout = 2.0 if p.passes else 0.5
    if p.proto == "tcp":
        return bed.tcp(p.src, p.dst, p.port, timeout=timeout)
    if p.proto == "udp":
        return bed.udp(p.src, p.dst, p.port, timeout=timeout)
    return bed.ping(p.src, p.dst, timeout=timeout)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_policy_scenario(clean: Testbed, scenario: Scenario) -> None:
    bed = clean
    ids = {pod: ep.id for pod, ep in bed.endpoints.items()}
    # the compiler plans the slots (deny precedence, ANY expansion); the writer writes them
    bed.datapath.policy_writer().apply(map_entries(scenario.entries(ids)), scenario.enforced(ids))
    for probe in scenario.probes:
        before = drop_count(bed, probe.reason, probe.direction) if not probe.passes else 0
        ok = run_probe(bed, probe)
        assert ok == probe.passes, f"{probe}: expected {'pass' if probe.passes else 'drop'}"
        if not probe.passes:
            assert drop_count(bed, probe.reason, probe.direction) > before, \
                f"{probe}: no drop counted with reason {probe.reason} {probe.direction}"


# ---- conntrack, anti-spoofing, audit ---------------------------------------------------------


def test_established_connection_survives_a_policy_change(clean: Testbed) -> None:
    bed = clean
    b = bed.endpoints["b"]
    with bed.connection("a", "b", 80) as conn:
        conn.sendall(b"one")
        assert conn.recv(16) == b"one"
        bed.datapath.policy_writer().apply([], {(b.id, "ingress")})
        assert not bed.tcp("a", "b", 80), "a new connection must be judged by the new policy"
        conn.sendall(b"two")
        assert conn.recv(16) == b"two", "the established connection must keep working"


def test_anti_spoofing_drops_a_forged_source_with_132(clean: Testbed) -> None:
    bed = clean
    a = bed.endpoints["a"]
    forged = "10.77.0.99"
    subprocess.run(["ip", "-n", a.netns, "addr", "add", f"{forged}/32", "dev", "eth0"], check=True)
    try:
        before = drop_count(bed, 132, "EGRESS")
        assert not bed.tcp("a", "b", 80, source_ip=forged)
        assert drop_count(bed, 132, "EGRESS") > before
        assert bed.tcp("a", "b", 80), "the pod's own address still works"
    finally:
        subprocess.run(["ip", "-n", a.netns, "addr", "del", f"{forged}/32", "dev", "eth0"], check=True)


def test_audit_mode_passes_and_counts_the_would_be_drop(clean: Testbed) -> None:
    bed = clean
    b = bed.endpoints["b"]
    bed.datapath.policy_writer().apply([], {(b.id, "ingress")})
    bed.datapath.set_audit(b.id, True)
    with events(bed) as drain:
        audited = drop_count(bed, 133, "INGRESS", verdict="AUDIT")
        assert bed.tcp("a", "b", 80)
        assert drop_count(bed, 133, "INGRESS", verdict="AUDIT") > audited
        ev = drain(lambda ev: bool(((ev["dport"] == 80) & (ev["direction"] == abi.DIR_INGRESS)
                                    & (ev["event_type"] == abi.EVENT_TRACE)).any()),
                   "the ingress trace of the audited SYN")
    ev = ev[(ev["dport"] == 80) & (ev["direction"] == abi.DIR_INGRESS)]
    verdicts = ev[ev["event_type"] == abi.EVENT_POLICY_VERDICT]
    assert [(int(v), int(r)) for v, r in zip(verdicts["verdict"], verdicts["drop_reason"], strict=True)] == \
        [(abi.VERDICTS["AUDIT"], 133)]
    traces = ev[ev["event_type"] == abi.EVENT_TRACE]
    assert list(traces["verdict"]) == [abi.VERDICTS["FORWARDED"]]
    assert not (ev["event_type"] == abi.EVENT_DROP).any()
    bed.datapath.set_audit(b.id, False)
    assert not bed.tcp("a", "b", 81)
    with pytest.raises(Exception, match="no endpoint 999"):
        bed.datapath.set_audit(999, True)


def test_events_report_drops_verdicts_traces_and_connection_totals(clean: Testbed) -> None:
    bed = clean
    b = bed.endpoints["b"]
    with events(bed) as drain:
        bed.datapath.policy_writer().apply([PolicyEntry(b.id, "ingress", A, TCP, 80, 16)], {(b.id, "ingress")})
        assert not bed.tcp("c", "b", 80)
        with bed.connection("a", "b", 80) as conn:
            conn.sendall(b"x" * 100)
            assert conn.recv(200)
        b_addr = int.from_bytes(bytes(map(int, b.ipv4.split("."))), "little")
        # the connection's end comes after the FIN/ACK exchange that follows close
        ev = drain(lambda ev: bool(((ev["dport"] == 80) & (ev["daddr"] == b_addr) & (ev["direction"] == abi.DIR_INGRESS)
                                    & (ev["event_type"] == abi.EVENT_CONN_END)).any()),
                   "the end of the a->b:80 connection")
    to_b = ev[(ev["dport"] == 80) & (ev["daddr"] == b_addr)]
    drops = to_b[to_b["event_type"] == abi.EVENT_DROP]
    assert len(drops) and (drops["drop_reason"] == 133).all() and (drops["src_identity"] == C).all()
    assert (drops["verdict"] == abi.VERDICTS["DROPPED"]).all()
    verdicts = to_b[(to_b["event_type"] == abi.EVENT_POLICY_VERDICT) & (to_b["direction"] == abi.DIR_INGRESS)]
    allowed = verdicts[verdicts["verdict"] == abi.VERDICTS["FORWARDED"]]
    assert len(allowed) == 1 and allowed["match_type"][0] == abi.MATCH_L3_L4
    assert allowed["src_identity"][0] == A and allowed["dst_identity"][0] == B
    assert allowed["tcp_flags"][0] == 0x02 and allowed["ep_id"][0] == b.id
    traces = to_b[to_b["event_type"] == abi.EVENT_TRACE]
    assert {int(d) for d in traces["direction"]} == {abi.DIR_INGRESS, abi.DIR_EGRESS}
    ends = to_b[(to_b["event_type"] == abi.EVENT_CONN_END) & (to_b["direction"] == abi.DIR_INGRESS)]
    assert len(ends) == 1
    assert ends["packets"][0] >= 4 and ends["reply_packets"][0] >= 3 and ends["bytes"][0] > 100
    assert bed.datapath.lost_events() == 0


def test_live_edits_take_effect_on_the_next_connection(clean: Testbed) -> None:
    bed = clean
    b = bed.endpoints["b"]
    w = bed.datapath.policy_writer()
    w.apply([], {(b.id, "ingress")})
    assert not bed.tcp("a", "b", 80)
    # what policy.map.edit does: the compiler plans the edit, the writer runs it on the live map
    w.edit(live_edit("allow", b.id, "ingress", identity=A, protocol=TCP, port=80))
    assert bed.tcp("a", "b", 80)
    w.edit(live_edit("deny", b.id, "ingress", identity=A))
    assert not bed.tcp("a", "b", 80)
    table = w.entries()
    assert set(table.action) == {"deny"} and table.shadowed.any()
    assert w.edit(live_edit("remove", b.id, "ingress", identity=A)) == 1
    assert bed.tcp("a", "b", 80), "removing the deny brings the shadowed allow back"
    w.edit(live_edit("allow", b.id, "ingress", protocol=TCP, port=8080, end_port=8083))
    assert bed.tcp("c", "b", 8082) and not bed.tcp("c", "b", 8084)
    rows = w.entries()
    assert rows[rows.port == 80].packets.iloc[0] >= 2, "counters carry over edits"
    assert w.enforced() == {(b.id, "ingress")}
    w.edit(live_edit("allow", b.id, "ingress", identity=A, protocol=0, port=53))  # ANY: TCP, UDP and SCTP keys
    assert bed.udp("a", "b", 53)
    assert w.edit(live_edit("remove", b.id, "ingress", identity=A, protocol=0, port=53)) == 3
    assert not bed.udp("a", "b", 53, timeout=0.5)
    assert w.edit(live_edit("remove", b.id, "ingress", protocol=TCP, port=8080, end_port=8083)) == 1
    assert list(w.entries().port) == [80]
    generation = w.active_generation()
    assert w.edit(live_edit("remove", b.id, "ingress", identity=C)) == 0
    assert w.active_generation() == generation, "an edit that changes nothing writes nothing"


def test_detach_removes_enforcement_and_attach_restores_it(clean: Testbed) -> None:
    bed = clean
    b = bed.endpoints["b"]
    bed.datapath.policy_writer().apply([], {(b.id, "ingress")})
    bed.datapath.detach_endpoint(b)
    try:
        assert bed.tcp("a", "b", 80)
        out = subprocess.run(["ip", "netns", "exec", bed.node, "tc", "filter", "show", "dev", b.lxc, "ingress"],
                             capture_output=True, text=True).stdout
        assert "from_container" not in out
    finally:
        bed.datapath.attach_endpoint(b)
    assert not bed.tcp("a", "b", 81)


# ---- generation swap and failed applies -------------------------------------------------------


def test_failed_apply_leaves_the_previous_policy_in_force() -> None:
    with Testbed.create(lab_name(), {"a": A, "b": B}, datapath_options={"policy_max": 8}) as bed:
        bed.serve("b", 80)
        bed.serve("b", 81)
        b = bed.endpoints["b"]
        w = bed.datapath.policy_writer()
        assert w.capacity == 8
        old = [PolicyEntry(b.id, "ingress", A, TCP, 80, 16), PolicyEntry(b.id, "ingress", 999, TCP, 81, 16),
               PolicyEntry(b.id, "ingress", 998, TCP, 81, 16)]
        w.apply(old, {(b.id, "ingress")})
        too_many = [PolicyEntry(b.id, "ingress", A, TCP, 81, 16)] + \
                   [PolicyEntry(b.id, "ingress", 1000 + i, TCP, 81, 16) for i in range(5)]
        with pytest.raises(ValidationError, match=r"at most 8.*POLICY_MAX"):
            w.apply(too_many, {(b.id, "ingress")})
        assert bed.tcp("a", "b", 80) and not bed.tcp("a", "b", 81)
        assert len(list(bed.datapath.bpf[b"policy"].keys())) == 3, "nothing of the refused policy was written"

        # Past the up-front check, the kernel refuses mid-write: rolled back as well.
        w.capacity = 1000
        with pytest.raises(ValidationError, match="previous policy still in force"):
            w.apply(too_many, {(b.id, "ingress")})
        assert len(list(bed.datapath.bpf[b"policy"].keys())) == 3
        assert bed.tcp("a", "b", 80) and not bed.tcp("a", "b", 81)
        gen = w.active_generation()
        w.capacity = 8
        w.apply([PolicyEntry(b.id, "ingress", A, TCP, 81, 16)], {(b.id, "ingress")})
        assert w.active_generation() == 1 - gen
        assert bed.tcp("a", "b", 81) and not bed.tcp("a", "b", 80)


def test_swap_under_load_never_judges_by_a_half_written_policy(clean: Testbed) -> None:
    """Flip between two policies that both allow a->b:80 (one with 2,000 unrelated entries).

    A half-written generation would drop some connections; none may fail.
    """
    bed = clean
    b = bed.endpoints["b"]
    w = bed.datapath.policy_writer()
    allow = PolicyEntry(b.id, "ingress", A, TCP, 80, 16)
    filler = [PolicyEntry(b.id, "ingress", 5000 + i, TCP, 80, 16) for i in range(2000)]
    import threading

    failures: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            if not bed.tcp("a", "b", 80, timeout=2.0):
                failures.append(1)

    t = threading.Thread(target=probe)
    t.start()
    try:
        for i in range(6):
            w.apply([allow, *filler] if i % 2 else [allow], {(b.id, "ingress")})
    finally:
        stop.set()
        t.join()
    assert not failures


# ---- agent death -------------------------------------------------------------------------------

AGENT = textwrap.dedent("""
    import sys, time
    from workbench.datapath.loader import Datapath
    from workbench.datapath import build
    from workbench.lab.model import Endpoint, PolicyEntry
    import json
    lab, node, eps = sys.argv[1], sys.argv[2], [Endpoint(**e) for e in json.loads(sys.argv[3])]
    dp = Datapath(lab, node)
    for ep in eps:
        build.ipcache_set(dp.bpf, ep.ipv4 + "/32", ep.identity)
        dp.attach_endpoint(ep)
    b = next(ep for ep in eps if ep.pod == "b")
    dp.policy_writer().apply([PolicyEntry(b.id, "ingress", 300, 6, 80, 16)], {(b.id, "ingress")})
    print("ready", flush=True)
    time.sleep(600)
""")


def test_policy_survives_sigkill_of_the_agent_and_a_new_agent_reattaches() -> None:
    import json

    with Testbed.create(lab_name(), {"a": A, "b": B, "c": C}, attach=False) as bed:
        start_servers(bed)
        eps = [ep.to_dict() for ep in bed.endpoints.values()]
        agent = subprocess.Popen([sys.executable, "-c", AGENT, bed.name, bed.node, json.dumps(eps)],
                                 stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            assert agent.stdout is not None
            assert agent.stdout.readline().strip() == "ready"
        finally:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait()
        assert bed.tcp("a", "b", 80) and not bed.tcp("c", "b", 80) and not bed.tcp("a", "b", 81)

        bed.datapath = Datapath(bed.name, bed.node)
        b = bed.endpoints["b"]
        prog_before = _filter_ids(bed, b.lxc)
        bed.datapath.reattach_all(list(bed.endpoints.values()))
        assert _filter_ids(bed, b.lxc) != prog_before, "the new agent's programs are attached"
        assert bed.tcp("a", "b", 80) and not bed.tcp("c", "b", 80)
        w = bed.datapath.policy_writer()
        assert list(w.entries().identity) == [A]
        w.edit(live_edit("allow", b.id, "ingress", identity=C, protocol=TCP, port=80))
        assert bed.tcp("c", "b", 80)
        bed.datapath.close()  # an agent that stops cleanly leaves the datapath running too
        bed.datapath = None
        assert bed.tcp("c", "b", 80) and not bed.tcp("c", "b", 81)


def _filter_ids(bed: Testbed, lxc: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", bed.node, "tc", "filter", "show", "dev", lxc, "ingress"],
                         capture_output=True, text=True, check=True).stdout
    ids = [w for w in out.split() if w.isdigit()]
    assert "from_container" in out
    return " ".join(ids)


# ---- periodic connection totals, L7 redirect marking, conntrack table ------------------------------


def test_live_connections_report_totals_periodically_and_conntrack_lists_them() -> None:
    options = {"cflags": ["-DCT_REPORT_INTERVAL_NS=100000000ULL"]}  # 100 ms instead of 5 s
    with Testbed.create(lab_name(), {"a": A, "b": B}, datapath_options=options) as bed:
        bed.serve("b", 80)
        b = bed.endpoints["b"]
        with events(bed) as drain:
            bed.datapath.policy_writer().apply([PolicyEntry(b.id, "ingress", A, TCP, 80, 16, proxy_port=15001)],
                                               {(b.id, "ingress")})
            with bed.connection("a", "b", 80) as conn:
                for _ in range(8):
                    conn.sendall(b"tick")
                    assert conn.recv(16) == b"tick"
                    time.sleep(0.06)
                table = bed.datapath.conntrack()
                ingress = table[(table.direction == "INGRESS") & (table.dst_port == 80)]
                assert len(ingress) == 1 and ingress.verdict.iloc[0] == "REDIRECTED"
                assert ingress.proxy_port.iloc[0] == 15001 and ingress.packets.iloc[0] >= 9
                assert not ingress.closed.iloc[0]
            ev = drain(lambda ev: int(((ev["event_type"] == abi.EVENT_CONN_STATS)
                                       & (ev["direction"] == abi.DIR_INGRESS)).sum()) >= 2,
                       "two periodic totals of the live connection")
        stats = ev[(ev["event_type"] == abi.EVENT_CONN_STATS) & (ev["direction"] == abi.DIR_INGRESS)]
        assert len(stats) >= 2
        assert list(stats["packets"]) == sorted(stats["packets"]) and stats["packets"][-1] > stats["packets"][0]
        verdict = ev[(ev["event_type"] == abi.EVENT_POLICY_VERDICT) & (ev["direction"] == abi.DIR_INGRESS)]
        assert verdict["verdict"][0] == abi.VERDICTS["REDIRECTED"] and verdict["proxy_port"][0] == 15001


def test_events_that_do_not_fit_the_ring_are_counted_as_lost() -> None:
    options = {"cflags": ["-DEVENTS_RING_PAGES=1"]}  # 4 KiB: room for a few dozen records
    with Testbed.create(lab_name(), {"a": A, "b": B}, datapath_options=options) as bed:
        b = bed.endpoints["b"]
        bed.datapath.policy_writer().apply([], {(b.id, "ingress")})
        sender = bed.socket_in("a", socket.SOCK_DGRAM)
        try:
            for _ in range(300):  # every datagram is a new drop: policy-verdict + drop records, nobody reads
                sender.sendto(b"x", (b.ipv4, 53))
        finally:
            sender.close()
        # the veth hands datagrams to the peer's backlog: counters catch up a little later
        wait_until(lambda: drop_count(bed, 133, "INGRESS") >= 300, 10, "300 counted policy drops")
        wait_until(lambda: bed.datapath.lost_events() > 400, 10, "more than 400 lost events")


def test_fragments_are_judged_as_their_datagram_and_orphans_drop_175(clean: Testbed) -> None:
    bed = clean
    a, b = bed.endpoints["a"], bed.endpoints["b"]
    bed.datapath.policy_writer().apply([PolicyEntry(b.id, "ingress", A, UDP, 53, 16)], {(b.id, "ingress")})
    s = bed.socket_in("a", socket.SOCK_DGRAM)
    s.settimeout(2.0)
    try:
        s.sendto(b"y" * 3000, (b.ipv4, 53))  # 3 fragments on a 1500-byte MTU
        assert len(s.recvfrom(5000)[0]) == 3000, "later fragments must pass as the allowed datagram"
    finally:
        s.close()

    # a later fragment (offset 1480) whose first fragment never came
    with netlink.in_netns(a.netns):
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        header = bytes([0x45, 0]) + (20 + 64).to_bytes(2, "big") + random.randrange(1, 0xFFFF).to_bytes(2, "big") \
            + (1480 // 8).to_bytes(2, "big") + bytes([64, UDP, 0, 0]) \
            + socket.inet_aton(a.ipv4) + socket.inet_aton(b.ipv4)
        before = drop_count(bed, 175, "EGRESS")
        raw.sendto(header + b"z" * 64, (b.ipv4, 0))
        wait_until(lambda: drop_count(bed, 175, "EGRESS") != before, 10, "the orphan fragment's drop (175)")
        assert drop_count(bed, 175, "EGRESS") == before + 1
    finally:
        raw.close()


def test_icmp_errors_of_a_tracked_connection_pass_as_related(clean: Testbed) -> None:
    bed = clean
    a = bed.endpoints["a"]
    # a's ingress is default-deny: only replies and related ICMP errors get in
    bed.datapath.policy_writer().apply([], {(a.id, "ingress")})
    s = bed.socket_in("a", socket.SOCK_DGRAM)
    s.settimeout(2.0)
    try:
        s.connect((bed.endpoints["b"].ipv4, 55))  # nobody listens: b answers port unreachable
        s.send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            s.recv(16)
    finally:
        s.close()
    assert not bed.ping("b", "a"), "an unrelated ICMP packet is still judged by policy"
