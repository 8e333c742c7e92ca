/* Structs shared between the datapath and Python. Declared once, here.
 *
 * Python reads them through BCC's decoded ctypes (bpf["map"].Key / .Leaf) and
 * through workbench/datapath/abi.py for the ring-buffer events; a test
 * checks that sizes and offsets agree. Field order is chosen so that no
 * implicit padding appears: every pad is spelled out, so that a key written
 * by Python and a key built in C are byte-for-byte equal.
 */
#ifndef WB_TYPES_H
#define WB_TYPES_H

/* Traffic direction as seen from the endpoint (Hubble's INGRESS/EGRESS). */
#define WB_DIR_INGRESS 0 /* to-container: into the pod */
#define WB_DIR_EGRESS  1 /* from-container: out of the pod */

/* Reserved identities (Cilium's numbering). Cluster identities start at 256. */
#define WB_ID_UNKNOWN 0
#define WB_ID_HOST    1
#define WB_ID_WORLD   2
#define WB_ID_HEALTH  4

/* ipcache: IPv4 prefix -> security identity. LPM trie, key in network order. */
struct ipcache_key {
    __u32 prefixlen;   /* 0..32 */
    __u32 addr;        /* network byte order */
};

struct ipcache_value {
    __u32 identity;
    __u32 flags;       /* reserved */
};

/* endpoints: lxc ifindex (in the node netns) -> what the datapath needs to
 * know about the pod behind it. Written by the agent when a pod is created;
 * adding a pod therefore compiles nothing. */
struct endpoint_key {
    __u32 ifindex;
};

#define WB_EP_AUDIT (1 << 0)  /* policy drops become AUDIT verdicts */

struct endpoint_info {
    __u32 ep_id;       /* endpoint id, small integer, unique in the lab */
    __u32 identity;
    __u32 ipv4;        /* network byte order; anti-spoofing compares with it */
    __u32 flags;       /* WB_EP_* */
};

/* ---- policy (lxc.bpf.c) ------------------------------------------------ */

/* Policy map key. An LPM trie matches leading bits in memory order, so the
 * fields that are always matched exactly come first (generation, direction,
 * endpoint), then the ones that may be wildcarded, from coarse to fine:
 * identity (0 = any peer), protocol (0 = any), then the port in network byte
 * order so that its high bits come first and a port range is a few prefix
 * blocks. Prefix lengths (bits after prefixlen):
 *   32  generation+direction+ep_id            (never used alone)
 *   64  + identity                            L3-only / "all"
 *   80  + proto + pad                         proto, any port
 *   80+p + p leading bits of dport            port prefix block (p=16: exact)
 */
struct policy_key {
    __u32 prefixlen;
    __u8  generation;  /* which of the two policy copies this entry belongs to */
    __u8  direction;   /* WB_DIR_* */
    __u16 ep_id;
    __u32 identity;    /* peer identity; 0 = any */
    __u8  proto;       /* IPPROTO_*; 0 = any (then prefixlen <= 64) */
    __u8  pad;
    __u16 dport;       /* network byte order */
};

#define WB_POLICY_PREFIX_FIXED    32
#define WB_POLICY_PREFIX_IDENTITY 64
#define WB_POLICY_PREFIX_PROTO    80
#define WB_POLICY_PREFIX_FULL     96

/* policy_value.flags */
#define WB_POLICY_SHADOWED (1 << 0) /* an allow stored as deny: a covering deny exists */

/* Hubble's policy match types (policy-verdict events). */
#define WB_MATCH_NONE     0
#define WB_MATCH_L3_ONLY  1
#define WB_MATCH_L3_L4    2
#define WB_MATCH_L4_ONLY  3
#define WB_MATCH_ALL      4

/* policy_value.cookie: which policies produced the entry, as a small index
 * into the agent's cookie table (workbench/datapath/cookies.py). The table
 * only grows while the lab lives, so a cookie read from an event after a
 * policy swap (or by a restarted agent, which reloads the table from the
 * lab's state directory) still names the policies of the entry that decided.
 * 0: no policy (nothing matched, or an entry written without names). */
#define WB_POLICY_COOKIE_NONE 0

struct policy_value {
    __u8  deny;        /* 1: deny entry (deny wins) */
    __u8  match_type;  /* WB_MATCH_*, decided when written */
    __u16 proxy_port;  /* host order; non-zero: L7 redirect */
    __u32 cookie;      /* WB_POLICY_COOKIE_NONE or an index into the agent's cookie table */
    __u8  flags;       /* WB_POLICY_* */
    __u8  pad[7];
    __u64 packets;     /* connections judged by this entry: first packets */
    __u64 bytes;
};

/* policy_state[0]: which generation the programs read. Flipping it with one
 * array update switches every endpoint to a completely written policy. */
struct policy_state {
    __u32 generation;
    __u32 pad;
};

/* policy_enforce: present = endpoint is default-deny in that direction in
 * that generation (selected by some policy). */
struct enforce_key {
    __u16 ep_id;
    __u8  generation;
    __u8  direction;
};

/* ---- conntrack ------------------------------------------------------------ */

/* One entry per connection per endpoint direction: pod A -> pod B on this
 * node has A's EGRESS entry and B's INGRESS entry. The tuple is the one of the
 * connection's first packet, addresses and ports in network order. */
struct ct_key {
    __u32 saddr;
    __u32 daddr;
    __u16 sport;       /* ICMP echo: the echo id (request); 0 otherwise */
    __u16 dport;       /* ICMP echo reply: the echo id */
    __u8  proto;
    __u8  direction;   /* WB_DIR_* of the endpoint that judged the first packet */
    __u16 pad;
};

#define WB_CT_FIN_ORIG  (1 << 0)
#define WB_CT_FIN_REPLY (1 << 1)
#define WB_CT_RST       (1 << 2)
#define WB_CT_ENDED     (1 << 3)  /* the conn-end event was sent */

struct ct_value {
    __u64 created_ns;
    __u64 last_seen_ns;
    __u64 last_report_ns;
    __u64 packets;         /* original direction */
    __u64 bytes;
    __u64 reply_packets;
    __u64 reply_bytes;
    __u32 src_identity;
    __u32 dst_identity;
    __u16 ep_id;
    __u16 proxy_port;
    __u8  flags;           /* WB_CT_* */
    __u8  match_type;      /* of the policy verdict that admitted it */
    __u8  verdict;         /* WB_VERDICT_FORWARDED / AUDIT / REDIRECTED */
    __u8  pad;
};

/* ---- events and counters --------------------------------------------------- */

/* Verdicts: Hubble's numbering (flow.Verdict). */
#define WB_VERDICT_UNKNOWN    0
#define WB_VERDICT_FORWARDED  1
#define WB_VERDICT_DROPPED    2
#define WB_VERDICT_ERROR      3
#define WB_VERDICT_AUDIT      4
#define WB_VERDICT_REDIRECTED 5

/* Drop reasons: Cilium's codes (pkg/monitor/api/drop.go). */
#define WB_DROP_INVALID_SOURCE_IP 132
#define WB_DROP_POLICY_DENIED     133  /* no allow entry */
#define WB_DROP_POLICY_DENY       181  /* explicit deny entry */
#define WB_DROP_FRAG_NOT_FOUND    175  /* a later IPv4 fragment whose first fragment was not seen */

/* flow_event.event_type */
#define WB_EVENT_TRACE          1  /* first packet of a connection, per direction, forwarded */
#define WB_EVENT_DROP           2  /* every dropped packet */
#define WB_EVENT_POLICY_VERDICT 3  /* first packet of a connection: the policy decision */
#define WB_EVENT_CONN_STATS     4  /* periodic totals of a live connection */
#define WB_EVENT_CONN_END       5  /* totals when a TCP connection ends (FIN both ways or RST) */

/* One ring-buffer record. Mirrored by workbench/datapath/abi.py
 * (FLOW_EVENT_DTYPE); tests compare sizes and offsets. 8-byte fields first,
 * no implicit padding. Addresses network order; ports host order. */
struct flow_event {
    __u64 ktime_ns;        /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
    __u64 packets;         /* CONN_*: original direction; else 1 */
    __u64 bytes;           /* CONN_*: original direction; else this packet's length */
    __u64 reply_packets;   /* CONN_* only */
    __u64 reply_bytes;
    __u32 saddr;
    __u32 daddr;
    __u32 src_identity;
    __u32 dst_identity;
    __u32 ifindex;         /* lxc device in the node netns */
    __u32 policy_cookie;   /* policy-verdict and drop events: policy_value.cookie of the deciding entry */
    __u16 sport;
    __u16 dport;
    __u16 ep_id;
    __u16 proxy_port;
    __u16 drop_reason;     /* WB_DROP_*; for AUDIT: the reason it would have had */
    __u8  proto;
    __u8  tcp_flags;       /* FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80 */
    __u8  event_type;      /* WB_EVENT_* */
    __u8  direction;       /* WB_DIR_* of the endpoint */
    __u8  is_reply;
    __u8  verdict;         /* WB_VERDICT_* */
    __u8  match_type;      /* WB_MATCH_* (policy-verdict events) */
    __u8  pad[7];
};

/* ipv4_frags: the ports of a fragmented datagram, learnt from its first
 * fragment, so that later fragments (no L4 header) are judged as their
 * datagram (Cilium's IPv4 fragment map). */
struct ipv4_frag_key {
    __u32 saddr;
    __u32 daddr;
    __u16 id;          /* IP identification, network order */
    __u8  proto;
    __u8  pad;
};

struct ipv4_frag_ports {
    __u16 sport;       /* network order */
    __u16 dport;
};

/* metrics: per-CPU packet/byte counters by verdict, direction and reason. */
struct metrics_key {
    __u8  verdict;
    __u8  direction;
    __u16 reason;      /* drop reason; 0 for forwarded */
};

struct metrics_value {
    __u64 packets;
    __u64 bytes;
};

/* local_endpoints: pod IPv4 (network order) -> how to hand a packet straight
 * to that pod. Established traffic between two pods of the lab skips the
 * node's IP stack and the destination's to-container program: from-container
 * accounts it on the destination's connection too and redirects it into the
 * pod's eth0 (bpf_redirect_peer), as Cilium's local delivery does. */
struct local_ep_key {
    __u32 addr;
};

struct local_ep_value {
    __u32 lxc_ifindex;  /* the destination's lxc; its peer is the pod's eth0 */
    __u8  pod_mac[6];   /* destination MAC the pod's stack expects */
    __u8  lxc_mac[6];   /* source MAC, as if the node had routed it */
    __u32 ep_id;
    __u32 identity;     /* for the L7 redirect's look at the destination's ingress policy */
};

#endif /* WB_TYPES_H */
