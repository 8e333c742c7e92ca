"""Local delivery: established traffic between two pods skips the node's stack and the
destination's to-container program (bpf_redirect_peer), yet is still accounted on the
destination's connection; first packets are still judged by the destination's policy."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

from workbench.datapath.progstats import run_time_stats
from workbench.datapath.testbed import Testbed
from workbench.lab.model import PolicyEntry

PORT = 7100
PACKETS = 200


@pytest.fixture
def bed() -> Iterator[Testbed]:
    with Testbed.create(f"ld{uuid.uuid4().hex[:6]}", {"a": 300, "b": 301, "c": 302}) as tb:
        tb.serve("b", PORT, "udp")
        yield tb


@pytest.fixture
def bpf_stats() -> Iterator[None]:
    """Run counting only while the test runs (a file descriptor, never the machine's sysctl)."""
    with run_time_stats():
        yield


def run_counts(bed: Testbed) -> dict[str, int]:
    """Runs of this bed's own two programs (their own fds' figures): other labs' programs never count."""
    return {name: bed.datapath.program_stats(name).run_cnt for name in ("from_container", "to_container")}


def echo_many(bed: Testbed, src: str, dst: str, n: int) -> int:
    """n datagrams over one socket (one connection); returns how many echoes came back."""
    sock = bed.socket_in(src, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    got = 0
    try:
        for _ in range(n):
            sock.sendto(b"x" * 32, (bed.endpoints[dst].ipv4, PORT))
            try:
                sock.recv(64)
                got += 1
            except OSError:
                pass
    finally:
        sock.close()
    return got


def test_established_traffic_bypasses_to_container_but_is_accounted(bed: Testbed, bpf_stats: None):
    before = run_counts(bed)
    assert echo_many(bed, "a", "b", PACKETS) == PACKETS
    after = run_counts(bed)
    ran = {name: after[name] - before[name] for name in after}
    # every datagram and every echo passes a from-container; only the first of each direction
    # (a new connection, judged by the destination) passes a to-container
    assert ran["from_container"] >= 2 * PACKETS
    assert ran["to_container"] <= 4, ran
    ct = bed.datapath.conntrack()
    b_ingress = ct[(ct.direction == "INGRESS") & (ct.ep_id == bed.endpoints["b"].id) & (ct.protocol == "UDP")]
    assert len(b_ingress) == 1
    assert int(b_ingress.packets.iloc[0]) == PACKETS and int(b_ingress.reply_packets.iloc[0]) == PACKETS


def test_first_packets_are_still_judged_by_the_destination(bed: Testbed):
    b = bed.endpoints["b"]
    writer = bed.datapath.policy_writer()
    # b accepts UDP from a only; c has no established connection to shortcut
    writer.apply([PolicyEntry(b.id, "ingress", bed.endpoints["a"].identity, 17, PORT, 16)], {(b.id, "ingress")})
    assert echo_many(bed, "a", "b", 5) == 5
    assert echo_many(bed, "c", "b", 3) == 0
