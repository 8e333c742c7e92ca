"""The datapath's vocabulary: every code the C programs use, and the one place it becomes a name.

The eBPF programs (bpf/lib/*.h) speak in numbers: verdicts, drop reasons,
event types, directions, TCP flag bits, IP protocols, policy match types. This
module is where those numbers get their names, once, in Cilium's and Hubble's
spelling; the flow schema, store, filters, renderers, metrics, the policy
compiler and the map writer all derive from it. It also mirrors the C structs
Python decodes in bulk as numpy dtypes with explicit offsets.

A constant here is named like its C ``#define`` without the ``WB_`` prefix
(``WB_DROP_POLICY_DENY`` -> :data:`DROP_POLICY_DENY`).
tests/unit/test_datapath_abi.py reads the headers and compares every code;
tests/privileged/test_datapath_layout.py compares every struct size and offset
with BCC's view of the compiled C.

Pure data: imports nothing from the rest of the package, so the pure layers
(lab, policy, observe) may import it.

Example::

    >>> rec = np.zeros(1, FLOW_EVENT_DTYPE)
    >>> rec["verdict"], rec["drop_reason"] = VERDICT_DROPPED, DROP_POLICY_DENY
    >>> VERDICT_NAMES[int(rec["verdict"][0])], DROP_REASON_NAMES[int(rec["drop_reason"][0])]
    ('DROPPED', 'POLICY_DENY')
    >>> tcp_flags_text(TCP_SYN | TCP_ACK)
    'SYN,ACK'
"""

from __future__ import annotations

import numpy as np

# ---- directions (WB_DIR_*: the endpoint's side of a packet) ------------------------------------
DIR_INGRESS = 0  # to-container: into the pod
DIR_EGRESS = 1   # from-container: out of the pod
DIRECTION_NAMES = {DIR_INGRESS: "INGRESS", DIR_EGRESS: "EGRESS"}  # Hubble's traffic_direction
DIRECTIONS = {name.lower(): code for code, name in DIRECTION_NAMES.items()}  # policy spelling

EP_AUDIT = 1 << 0  # endpoint_info.flags: policy drops pass as AUDIT

# ---- verdicts (WB_VERDICT_*: Hubble's flow.Verdict numbering) ------------------------------------
VERDICT_UNKNOWN = 0
VERDICT_FORWARDED = 1
VERDICT_DROPPED = 2
VERDICT_ERROR = 3
VERDICT_AUDIT = 4
VERDICT_REDIRECTED = 5
# Listed in the order `hubble observe --verdict` lists them (the flow table's category order).
VERDICT_NAMES = {VERDICT_FORWARDED: "FORWARDED", VERDICT_DROPPED: "DROPPED", VERDICT_AUDIT: "AUDIT",
                 VERDICT_REDIRECTED: "REDIRECTED", VERDICT_ERROR: "ERROR", VERDICT_UNKNOWN: "VERDICT_UNKNOWN"}
VERDICTS = {name: code for code, name in VERDICT_NAMES.items()}

# ---- drop reasons (WB_DROP_*: Cilium's codes) ----------------------------------------------------
# The codes the programs emit; the names below are the whole of Cilium's table.
DROP_INVALID_SOURCE_IP = 132
DROP_POLICY_DENIED = 133      # enforced direction, no allow entry
DROP_FRAG_NOT_FOUND = 175     # a later IPv4 fragment whose first fragment was not seen
DROP_SOCKET_LOOKUP_FAILED = 178  # the L7 proxy's socket is not there
DROP_SOCKET_ASSIGN_FAILED = 179
DROP_POLICY_DENY = 181        # an explicit deny entry
# Every drop reason Cilium defines (pkg/monitor/api/drop.go, bpf/lib/common.h), named as Hubble's
# flow.DropReason enum names it (api/v1/flow/flow.proto): these are the drop_reason_desc values.
DROP_REASON_UNKNOWN = "DROP_REASON_UNKNOWN"  # flow.proto's 0: not dropped, or a code Cilium lacks
DROP_REASON_NAMES: dict[int, str] = {
    130: "INVALID_SOURCE_MAC",
    131: "INVALID_DESTINATION_MAC",
    132: "INVALID_SOURCE_IP",
    133: "POLICY_DENIED",
    134: "INVALID_PACKET_DROPPED",
    135: "CT_TRUNCATED_OR_INVALID_HEADER",
    136: "CT_MISSING_TCP_ACK_FLAG",
    137: "CT_UNKNOWN_L4_PROTOCOL",
    138: "CT_CANNOT_CREATE_ENTRY_FROM_PACKET",
    139: "UNSUPPORTED_L3_PROTOCOL",
    140: "MISSED_TAIL_CALL",
    141: "ERROR_WRITING_TO_PACKET",
    142: "UNKNOWN_L4_PROTOCOL",
    143: "UNKNOWN_ICMPV4_CODE",
    144: "UNKNOWN_ICMPV4_TYPE",
    145: "UNKNOWN_ICMPV6_CODE",
    146: "UNKNOWN_ICMPV6_TYPE",
    147: "ERROR_RETRIEVING_TUNNEL_KEY",
    148: "ERROR_RETRIEVING_TUNNEL_OPTIONS",
    149: "INVALID_GENEVE_OPTION",
    150: "UNKNOWN_L3_TARGET_ADDRESS",
    151: "STALE_OR_UNROUTABLE_IP",
    152: "NO_MATCHING_LOCAL_CONTAINER_FOUND",
    153: "ERROR_WHILE_CORRECTING_L3_CHECKSUM",
    154: "ERROR_WHILE_CORRECTING_L4_CHECKSUM",
    155: "CT_MAP_INSERTION_FAILED",
    156: "INVALID_IPV6_EXTENSION_HEADER",
    157: "IP_FRAGMENTATION_NOT_SUPPORTED",
    158: "SERVICE_BACKEND_NOT_FOUND",
    160: "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT",
    161: "FAILED_TO_INSERT_INTO_PROXYMAP",
    162: "REACHED_EDT_RATE_LIMITING_DROP_HORIZON",
    163: "UNKNOWN_CONNECTION_TRACKING_STATE",
    164: "LOCAL_HOST_IS_UNREACHABLE",
    165: "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION",
    166: "UNSUPPORTED_L2_PROTOCOL",
    167: "NO_MAPPING_FOR_NAT_MASQUERADE",
    168: "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE",
    169: "FIB_LOOKUP_FAILED",
    170: "ENCAPSULATION_TRAFFIC_IS_PROHIBITED",
    171: "INVALID_IDENTITY",
    172: "UNKNOWN_SENDER",
    173: "NAT_NOT_NEEDED",
    174: "IS_A_CLUSTERIP",
    175: "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
    176: "FORBIDDEN_ICMPV6_MESSAGE",
    177: "DENIED_BY_LB_SRC_RANGE_CHECK",
    178: "SOCKET_LOOKUP_FAILED",
    179: "SOCKET_ASSIGN_FAILED",
    180: "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL",
    181: "POLICY_DENY",
    182: "VLAN_FILTERED",
    183: "INVALID_VNI",
    184: "INVALID_TC_BUFFER",
    185: "NO_SID",
    186: "MISSING_SRV6_STATE",
    187: "NAT46",
    188: "NAT64",
    189: "AUTH_REQUIRED",
    190: "CT_NO_MAP_FOUND",
    191: "SNAT_NO_MAP_FOUND",
    192: "INVALID_CLUSTER_ID",
    193: "UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP",
    194: "NO_EGRESS_GATEWAY",
    196: "TTL_EXCEEDED",
    197: "NO_NODE_ID",
    202: "DROP_HOST_NOT_READY",
    203: "DROP_EP_NOT_READY",
}

# ---- event types (WB_EVENT_*: flow_event.event_type) ---------------------------------------------
EVENT_TRACE = 1           # first packet of a connection, per direction, forwarded
EVENT_DROP = 2            # every dropped packet
EVENT_POLICY_VERDICT = 3  # first packet of a connection: the policy decision
EVENT_CONN_STATS = 4      # periodic totals of a live connection
EVENT_CONN_END = 5        # totals when a TCP connection ends
EVENT_TYPE_NAMES = {EVENT_TRACE: "trace", EVENT_DROP: "drop", EVENT_POLICY_VERDICT: "policy-verdict",
                    EVENT_CONN_STATS: "conn-stats", EVENT_CONN_END: "conn-end"}
# The flow table's event_type (Hubble's): connection totals are shown as trace rows, and
# "l7" rows come from the L7 proxy, not from a datapath record.
FLOW_EVENT_TYPE_NAMES = {**EVENT_TYPE_NAMES, EVENT_CONN_STATS: "trace", EVENT_CONN_END: "trace"}
FLOW_EVENT_L7 = "l7"
# Hubble's trace observation point of a trace row, by its traffic_direction.
TRACE_POINT_BY_DIRECTION = {DIRECTION_NAMES[DIR_INGRESS]: "to-endpoint",
                            DIRECTION_NAMES[DIR_EGRESS]: "from-endpoint"}

# ---- policy match types (WB_MATCH_*: what decided a policy verdict) ------------------------------
MATCH_NONE, MATCH_L3_ONLY, MATCH_L3_L4, MATCH_L4_ONLY, MATCH_ALL = range(5)
MATCH_TYPE_NAMES = {MATCH_NONE: "none", MATCH_L3_ONLY: "L3-Only", MATCH_L3_L4: "L3-L4",
                    MATCH_L4_ONLY: "L4-Only", MATCH_ALL: "all"}
MATCH_TYPES = {name: code for code, name in MATCH_TYPE_NAMES.items()}

# ---- TCP flag bits (WB_TCP_*; the C names only those it tests) -----------------------------------
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80
# In header order, spelled as Hubble prints them.
TCP_FLAG_NAMES = {TCP_FIN: "FIN", TCP_SYN: "SYN", TCP_RST: "RST", TCP_PSH: "PSH", TCP_ACK: "ACK",
                  TCP_URG: "URG", TCP_ECE: "ECE", TCP_CWR: "CWR"}

# ---- IP protocols (IPPROTO_*, as struct flow_event / policy_key / ct_key carry them) -------------
PROTO_ANY = 0  # policy keys only: any protocol
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
# Hubble's names (flow.Layer4): the flow table's protocol column.
PROTOCOL_NAMES = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_ICMP: "ICMPv4", IPPROTO_ICMPV6: "ICMPv6",
                  IPPROTO_SCTP: "SCTP"}
# Policy spelling (a CiliumNetworkPolicy's ``protocol``, the policy map's view): 0 is ANY.
POLICY_PROTOCOL_NAMES = {PROTO_ANY: "ANY", IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP",
                         IPPROTO_ICMP: "ICMP"}
POLICY_PROTOCOLS = {name: code for code, name in POLICY_PROTOCOL_NAMES.items()}

# ---- policy map (struct policy_key / policy_value) -----------------------------------------------
# Key prefix lengths: the fixed fields, then identity, protocol and port bits.
POLICY_PREFIX_FIXED = 32
POLICY_PREFIX_IDENTITY = 64
POLICY_PREFIX_PROTO = 80
POLICY_PREFIX_FULL = 96
POLICY_SHADOWED = 1 << 0  # policy_value.flags: an allow stored as deny under a covering deny
# policy_value.cookie / flow_event.policy_cookie: which policies produced the deciding entry, an index
# into the agent's cookie table (workbench/datapath/cookies.py); 0 = none (nothing matched).
POLICY_COOKIE_NONE = 0

# ---- conntrack (ct_value.flags, WB_CT_*) ---------------------------------------------------------
CT_FIN_ORIG = 1 << 0
CT_FIN_REPLY = 1 << 1
CT_RST = 1 << 2
CT_ENDED = 1 << 3  # the conn-end event was sent


def _dtype(fields: list[tuple[str, str, int]], itemsize: int) -> np.dtype:
    names, formats, offsets = zip(*fields, strict=True)
    return np.dtype({"names": list(names), "formats": list(formats), "offsets": list(offsets),
                     "itemsize": itemsize})


# struct flow_event (little-endian host; saddr/daddr are network order u32).
FLOW_EVENT_DTYPE = _dtype([
    ("ktime_ns", "<u8", 0), ("packets", "<u8", 8), ("bytes", "<u8", 16),
    ("reply_packets", "<u8", 24), ("reply_bytes", "<u8", 32),
    ("saddr", "<u4", 40), ("daddr", "<u4", 44), ("src_identity", "<u4", 48),
    ("dst_identity", "<u4", 52), ("ifindex", "<u4", 56), ("policy_cookie", "<u4", 60),
    ("sport", "<u2", 64), ("dport", "<u2", 66), ("ep_id", "<u2", 68), ("proxy_port", "<u2", 70),
    ("drop_reason", "<u2", 72), ("proto", "u1", 74), ("tcp_flags", "u1", 75),
    ("event_type", "u1", 76), ("direction", "u1", 77), ("is_reply", "u1", 78),
    ("verdict", "u1", 79), ("match_type", "u1", 80),
], 88)

# struct policy_key / policy_value.
POLICY_KEY_DTYPE = _dtype([
    ("prefixlen", "<u4", 0), ("generation", "u1", 4), ("direction", "u1", 5), ("ep_id", "<u2", 6),
    ("identity", "<u4", 8), ("proto", "u1", 12), ("pad", "u1", 13), ("dport", ">u2", 14),
], 16)
POLICY_VALUE_DTYPE = _dtype([
    ("deny", "u1", 0), ("match_type", "u1", 1), ("proxy_port", "<u2", 2), ("cookie", "<u4", 4),
    ("flags", "u1", 8), ("packets", "<u8", 16), ("bytes", "<u8", 24),
], 32)

# struct ct_key / ct_value.
CT_KEY_DTYPE = _dtype([
    ("saddr", "<u4", 0), ("daddr", "<u4", 4), ("sport", ">u2", 8), ("dport", ">u2", 10),
    ("proto", "u1", 12), ("direction", "u1", 13),
], 16)
CT_VALUE_DTYPE = _dtype([
    ("created_ns", "<u8", 0), ("last_seen_ns", "<u8", 8), ("last_report_ns", "<u8", 16),
    ("packets", "<u8", 24), ("bytes", "<u8", 32), ("reply_packets", "<u8", 40),
    ("reply_bytes", "<u8", 48), ("src_identity", "<u4", 56), ("dst_identity", "<u4", 60),
    ("ep_id", "<u2", 64), ("proxy_port", "<u2", 66), ("flags", "u1", 68), ("match_type", "u1", 69),
    ("verdict", "u1", 70),
], 72)


def tcp_flags_text(flags: int) -> str:
    """0x12 -> "SYN,ACK" (Hubble's spelling, header order)."""
    return ",".join(name for bit, name in TCP_FLAG_NAMES.items() if flags & bit)


def drop_reason_name(code: int) -> str:
    """133 -> "POLICY_DENIED"; 0 or a code Cilium does not define -> "DROP_REASON_UNKNOWN"."""
    return DROP_REASON_NAMES.get(int(code), DROP_REASON_UNKNOWN)
