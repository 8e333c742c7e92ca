"""abi.py speaks the same numbers as the C programs: every WB_* code in bpf/lib/*.h is checked.

The headers are read as text (no compiler): ``#define WB_NAME <integer or (1 << n)>``.
A family (directions, verdicts, drop reasons, ...) must agree both ways: each C
code has its Python constant and name, and each Python constant of the family
has its C code (TCP flags excepted: the C names only the bits it tests).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from workbench.datapath import abi

HEADERS = sorted((Path(__file__).resolve().parents[2] / "bpf" / "lib").glob("*.h"))
DEFINE = re.compile(r"^\s*#define\s+WB_(\w+)\s+(?:\(\s*1\s*<<\s*(\d+)\s*\)|(0x[0-9a-fA-F]+|\d+)\b)", re.M)

# family prefix -> the abi table naming its codes (None: flags or lengths without names)
FAMILIES: dict[str, dict[int, str] | None] = {
    "DIR_": abi.DIRECTION_NAMES,
    "VERDICT_": abi.VERDICT_NAMES,
    "DROP_": abi.DROP_REASON_NAMES,
    "EVENT_": abi.EVENT_TYPE_NAMES,
    "MATCH_": abi.MATCH_TYPE_NAMES,
    "TCP_": abi.TCP_FLAG_NAMES,
    "POLICY_PREFIX_": None,
}
SINGLES = ["EP_AUDIT", "POLICY_SHADOWED", "POLICY_COOKIE_NONE", "CT_FIN_ORIG", "CT_FIN_REPLY", "CT_RST", "CT_ENDED"]


def c_codes() -> dict[str, int]:
    codes: dict[str, int] = {}
    for header in HEADERS:
        for name, shift, number in DEFINE.findall(header.read_text()):
            value = 1 << int(shift) if shift else int(number, 0)
            assert codes.setdefault(name, value) == value, f"WB_{name} defined twice with different values"
    return codes


def test_the_headers_are_found_and_parsed() -> None:
    codes = c_codes()
    assert len(HEADERS) >= 5
    # a few anchors, so a parser that finds nothing cannot pass the tests below
    assert codes["DROP_POLICY_DENY"] == 181 and codes["VERDICT_REDIRECTED"] == 5 and codes["TCP_ACK"] == 0x10


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_c_code_of_a_family_has_its_python_constant_and_name(family: str) -> None:
    c_family = {name: value for name, value in c_codes().items() if name.startswith(family)}
    assert c_family, f"no WB_{family}* in the headers"
    for name, value in c_family.items():
        assert getattr(abi, name, None) == value, f"abi.{name} != WB_{name} ({value})"
        names = FAMILIES[family]
        if names is not None:
            assert value in names, f"WB_{name} = {value} has no name in abi"


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"TCP_"}))
def test_every_python_code_of_a_family_exists_in_c(family: str) -> None:
    codes = c_codes()
    python = [n for n in dir(abi) if n.startswith(family) and isinstance(getattr(abi, n), int)]
    assert python
    missing = [n for n in python if n not in codes]
    assert not missing, f"abi defines {missing} but bpf/lib/*.h does not"


@pytest.mark.parametrize("name", SINGLES)
def test_flag_constants_match_c(name: str) -> None:
    assert getattr(abi, name) == c_codes()[name]


def test_protocol_numbers_are_the_kernels() -> None:
    assert (abi.IPPROTO_ICMP, abi.IPPROTO_TCP, abi.IPPROTO_UDP, abi.IPPROTO_ICMPV6) == \
        (socket.IPPROTO_ICMP, socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMPV6)
    assert abi.IPPROTO_SCTP == getattr(socket, "IPPROTO_SCTP", 132)


@pytest.mark.parametrize(("code", "name"), [
    (132, "INVALID_SOURCE_IP"), (133, "POLICY_DENIED"), (158, "SERVICE_BACKEND_NOT_FOUND"),
    (175, "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND"), (178, "SOCKET_LOOKUP_FAILED"), (181, "POLICY_DENY"),
    (0, "DROP_REASON_UNKNOWN"), (7, "DROP_REASON_UNKNOWN"),
])
def test_drop_reasons_carry_hubbles_enum_names(code: int, name: str) -> None:
    assert abi.drop_reason_name(code) == name


def test_tcp_flags_read_in_header_order() -> None:
    assert abi.tcp_flags_text(0x12) == "SYN,ACK"
    assert abi.tcp_flags_text(0xFF) == "FIN,SYN,RST,PSH,ACK,URG,ECE,CWR"
    assert abi.tcp_flags_text(0) == ""
