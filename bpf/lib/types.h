/* Structs shared between the datapath and Python. Declared once, here.
 *
 * Python reads them through BCC's decoded ctypes (bpf["map"].Key / .Leaf) and
 * through workbench/datapath/layout.py for the ring-buffer events; a unit test
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

#endif /* WB_TYPES_H */
