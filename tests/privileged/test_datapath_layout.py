"""abi.py mirrors bpf/lib/types.h: every size and offset agrees with BCC's view of the C."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from workbench.datapath import abi, build

MIRRORS = {
    "flow_event": abi.FLOW_EVENT_DTYPE,
    "policy_key": abi.POLICY_KEY_DTYPE,
    "policy_value": abi.POLICY_VALUE_DTYPE,
    "ct_key": abi.CT_KEY_DTYPE,
    "ct_value": abi.CT_VALUE_DTYPE,
}


@pytest.fixture(scope="module")
def bcc_types() -> dict[str, type]:
    from bcc import BPF

    # one unpinned hash per struct: BCC then builds a ctypes class for it from the C
    text = '#include "lib/types.h"\n' + "".join(
        f"BPF_HASH(m_{name}, __u32, struct {name}, 1);\n" for name in MIRRORS)
    bpf = BPF(text=text.encode(), cflags=[f"-I{build.BPF_DIR}"])
    try:
        yield {name: bpf[f"m_{name}".encode()].Leaf for name in MIRRORS}
    finally:
        bpf.cleanup()


@pytest.mark.parametrize("name", sorted(MIRRORS))
def test_mirror_matches_the_c_struct(bcc_types: dict[str, type], name: str) -> None:
    ctype, dtype = bcc_types[name], MIRRORS[name]
    assert dtype.itemsize == ctypes.sizeof(ctype), name
    c_fields = {f[0] for f in ctype._fields_}  # type: ignore[attr-defined]
    for field in dtype.names or ():
        assert field in c_fields, f"{name}.{field} is not in the C struct"
        offset = getattr(ctype, field).offset
        assert dtype.fields[field][1] == offset, f"{name}.{field}: {dtype.fields[field][1]} != C {offset}"
        assert dtype.fields[field][0].itemsize == getattr(ctype, field).size, f"{name}.{field} size"
    mirrored = set(dtype.names or ())
    unmirrored = {f for f in c_fields if f not in mirrored and not f.startswith("pad")}
    assert not unmirrored, f"{name}: C fields missing from the mirror: {unmirrored}"


def test_a_record_written_in_c_layout_decodes_in_numpy(bcc_types: dict[str, type]) -> None:
    ev = bcc_types["flow_event"]()
    ev.ktime_ns, ev.sport, ev.dport, ev.drop_reason, ev.verdict, ev.match_type = 7, 1234, 80, 133, 2, 3
    ev.policy_cookie = 0xC0FFEE
    rec = np.frombuffer(bytes(ev), dtype=abi.FLOW_EVENT_DTYPE)[0]
    assert (rec["ktime_ns"], rec["sport"], rec["dport"], rec["drop_reason"]) == (7, 1234, 80, 133)
    assert rec["policy_cookie"] == 0xC0FFEE
    assert abi.VERDICT_NAMES[int(rec["verdict"])] == "DROPPED"
    assert abi.MATCH_TYPE_NAMES[int(rec["match_type"])] == "L4-Only"


def test_a_policy_value_written_in_c_layout_carries_its_cookie(bcc_types: dict[str, type]) -> None:
    value = bcc_types["policy_value"]()
    value.deny, value.proxy_port, value.cookie, value.flags, value.packets = 1, 10080, 0x12345678, 1, 9
    rec = np.frombuffer(bytes(value), dtype=abi.POLICY_VALUE_DTYPE)[0]
    assert (rec["deny"], rec["proxy_port"], rec["cookie"], rec["flags"], rec["packets"]) == \
        (1, 10080, 0x12345678, abi.POLICY_SHADOWED, 9)
