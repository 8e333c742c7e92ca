"""Pure stages of the policy-map writer: port ranges as prefix blocks, deny precedence."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from workbench.datapath import abi as layout
from workbench.datapath.policymap import Slot, block_range, port_blocks, slots_to_entries, to_slots
from workbench.errors import ValidationError
from workbench.lab.model import PolicyEntry


@pytest.mark.parametrize(("first", "last", "expected"), [
    (80, 80, [(80, 16)]),
    (8080, 8083, [(8080, 14)]),
    (0, 65535, [(0, 0)]),
    (1, 3, [(1, 16), (2, 15)]),
    (8000, 8100, [(8000, 10), (8064, 11), (8096, 14), (8100, 16)]),
    (65535, 65535, [(65535, 16)]),
])
def test_port_blocks_known_ranges(first: int, last: int, expected: list[tuple[int, int]]) -> None:
    assert port_blocks(first, last) == expected


def test_port_blocks_cover_exactly_the_range_and_are_minimal() -> None:
    rng = random.Random(4)
    for _ in range(3000):
        first = rng.randrange(65536)
        last = rng.randrange(first, 65536)
        blocks = port_blocks(first, last)
        covered = [block_range(p, pre) for p, pre in blocks]
        assert covered[0][0] == first and covered[-1][1] == last
        assert all(a[1] + 1 == b[0] for a, b in zip(covered, covered[1:], strict=False))
        assert len(blocks) <= 30  # at most 2 blocks per bit
        # minimal: no two neighbours could merge into one aligned block
        for (p1, s1), (p2, s2) in zip(blocks, blocks[1:], strict=False):
            assert not (s1 == s2 and s1 > 0 and block_range(p1, s1 - 1) == (p1, block_range(p2, s2)[1]))


@pytest.mark.parametrize(("first", "last"), [(5, 4), (-1, 3), (0, 65536)])
def test_port_blocks_refuse_bad_ranges(first: int, last: int) -> None:
    with pytest.raises(ValidationError, match="0-65535"):
        port_blocks(first, last)


def test_slot_prefix_lengths_follow_the_key_layout() -> None:
    assert Slot(1, "ingress", 300, 0, 0, 0).prefixlen == layout.POLICY_PREFIX_IDENTITY
    assert Slot(1, "ingress", 300, 6, 0, 0).prefixlen == layout.POLICY_PREFIX_PROTO
    assert Slot(1, "ingress", 300, 6, 80, 16).prefixlen == layout.POLICY_PREFIX_FULL


def _by_slot(entries: list[PolicyEntry]) -> dict[tuple[int, int, int, int], tuple[bool, bool]]:
    return {(s.identity, s.protocol, s.port, s.port_prefix): (v.deny, v.shadowed)
            for s, v in to_slots(entries).items() if s.direction == "ingress"}


def test_allow_under_a_covering_deny_is_stored_as_deny() -> None:
    got = _by_slot([
        PolicyEntry(1, "ingress", 300, 6, 80, 16),                # under the L3 deny
        PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True),
        PolicyEntry(1, "ingress", 301, 6, 8080, 16),              # under 301's range deny
        PolicyEntry(1, "ingress", 301, 6, 8080, 14, deny=True),
        PolicyEntry(1, "ingress", 301, 6, 9000, 16),              # outside it: stays allow
        PolicyEntry(1, "ingress", 302, 6, 0, 0),                  # wider than the deny: stays allow
        PolicyEntry(1, "ingress", 302, 6, 22, 16, deny=True),
        PolicyEntry(1, "egress", 300, 6, 80, 16),                 # other direction: stays allow
        PolicyEntry(1, "ingress", 0, 6, 80, 16),                  # other identity bucket: stays allow
    ])
    assert got[(300, 6, 80, 16)] == (True, True)
    assert got[(301, 6, 8080, 16)] == (True, True)
    assert got[(301, 6, 9000, 16)] == (False, False)
    assert got[(302, 6, 0, 0)] == (False, False)
    assert got[(302, 6, 22, 16)] == (True, False)
    assert got[(0, 6, 80, 16)] == (False, False)
    egress = [v for s, v in to_slots([PolicyEntry(1, "egress", 300, 6, 80, 16),
                                        PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True)]).items()
              if s.direction == "egress"]
    assert [(v.deny, v.shadowed) for v in egress] == [(False, False)]


def test_equal_keys_merge_with_deny_winning_and_rules_united() -> None:
    slots = to_slots([
        PolicyEntry(1, "ingress", 300, 6, 80, 16, proxy_port=15000, rules=("default/a",)),
        PolicyEntry(1, "ingress", 300, 6, 80, 16, deny=True, rules=("default/b",)),
    ])
    (value,) = slots.values()
    assert value.deny and not value.shadowed and value.proxy_port == 0
    assert value.rules == ("default/a", "default/b")


def test_a_port_with_any_protocol_becomes_tcp_udp_sctp() -> None:
    slots = to_slots([PolicyEntry(1, "ingress", 0, 0, 53, 16)])
    assert sorted(s.protocol for s in slots) == [6, 17, 132]
    assert {v.match_type for v in slots.values()} == {"L4-Only"}


def test_shadowed_slots_read_back_as_the_allows_they_were() -> None:
    entries = [PolicyEntry(1, "ingress", 300, 6, 80, 16), PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True)]
    back = slots_to_entries(to_slots(entries))
    assert sorted(back, key=lambda e: e.protocol) == sorted(entries, key=lambda e: e.protocol)


@pytest.mark.parametrize(("entry", "field"), [
    (PolicyEntry(1, "sideways", 0, 0, 0, 0), "direction"),  # type: ignore[arg-type]
    (PolicyEntry(70000, "ingress", 0, 0, 0, 0), "endpoint id"),
    (PolicyEntry(1, "ingress", 0, 6, 80, 17), "prefix"),
    (PolicyEntry(1, "ingress", 0, 6, 70000, 16), "port"),
])
def test_bad_entries_are_refused_naming_the_field(entry: PolicyEntry, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        to_slots([entry])


def test_events_frame_decodes_records_in_hubble_vocabulary() -> None:
    import numpy as np

    from workbench.datapath.events import events_frame

    rec = np.zeros(2, layout.FLOW_EVENT_DTYPE)
    rec["saddr"] = int.from_bytes(bytes([10, 77, 0, 10]), "little")
    rec["daddr"] = int.from_bytes(bytes([10, 77, 0, 11]), "little")
    rec["sport"], rec["dport"], rec["proto"], rec["tcp_flags"] = 40000, 80, 6, 0x12
    rec["verdict"] = [layout.VERDICTS["DROPPED"], layout.VERDICTS["AUDIT"]]
    rec["drop_reason"] = [181, 133]
    rec["event_type"] = [layout.EVENT_DROP, layout.EVENT_POLICY_VERDICT]
    rec["direction"] = [layout.DIR_INGRESS, layout.DIR_EGRESS]
    rec["match_type"] = [layout.MATCH_NONE, layout.MATCH_L3_L4]
    rec["ktime_ns"] = [1_000, 2_000]
    df = events_frame(rec, boot_offset_ns=1_700_000_000 * 10**9)
    assert df.src_ip.tolist() == ["10.77.0.10"] * 2 and df.dst_ip.tolist() == ["10.77.0.11"] * 2
    assert df.verdict.tolist() == ["DROPPED", "AUDIT"]
    assert df.drop_reason_desc.tolist() == ["POLICY_DENY", "POLICY_DENIED"]
    assert df.event_type.tolist() == ["drop", "policy-verdict"]
    assert df.traffic_direction.tolist() == ["INGRESS", "EGRESS"]
    assert df.policy_match_type.tolist() == ["none", "L3-L4"]
    assert df.tcp_flags.tolist() == ["SYN,ACK"] * 2 and df.protocol.tolist() == ["TCP"] * 2
    assert str(df.time.dt.tz) == "UTC" and df.time.iloc[1] - df.time.iloc[0] == pd.Timedelta(1000, "ns")
