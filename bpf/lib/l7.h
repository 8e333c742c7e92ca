/* L7 redirect: connections that an L7 (HTTP) policy covers go to the
 * agent's transparent proxy instead of the destination (Cilium's TPROXY
 * path, done with socket assignment as bpf/lib/proxy.h in Cilium does).
 *
 * Where: from-container (TC ingress on the client's lxc), the only hook
 * that may assign a socket. A new TCP connection is redirected when either
 *  - the client's own EGRESS entry carries a proxy port, or
 *  - the destination is a lab pod whose INGRESS entry for (client identity,
 *    TCP, dport) carries one (looked up here without counting: the
 *    destination's to-container judges the proxy's upstream connection and
 *    counts it then).
 * The conntrack entry keeps the proxy port, so every later packet of the
 * connection is assigned too. The proxy's accepted socket has the original
 * destination as its local address; its replies leave with that source and
 * pass the client's to-container as replies of the client's connection.
 *
 * Why socket assignment: the destination address stays untouched (no NAT,
 * no reverse translation to keep), the backend and the client both see
 * their usual addresses, and bpf_sk_assign only steers delivery; the mark
 * below makes the node route the packet locally so that the assigned
 * socket receives it (ip rule fwmark 0x200/0xf00 -> local table).
 *
 * The proxy's upstream connections leave from the node with SO_MARK =
 * FROM_PROXY magic | client identity << 16; to-container takes the peer
 * identity from that mark, so the backend's L3/L4 check sees the real
 * client. Pods cannot forge marks: veth scrubs skb->mark between netns. */
#ifndef WB_L7_H
#define WB_L7_H

#include "maps.h"

#define WB_MARK_MAGIC_MASK       0x0F00
#define WB_MARK_MAGIC_TO_PROXY   0x0200  /* set here: the node delivers the packet locally */
#define WB_MARK_MAGIC_FROM_PROXY 0x0A00  /* set by the proxy (SO_MARK) on upstream sockets */

#define WB_DROP_SOCKET_LOOKUP_FAILED 178  /* Cilium: the proxy's socket is not there */
#define WB_DROP_SOCKET_ASSIGN_FAILED 179

#ifndef L7_PROXY_ADDR
#define L7_PROXY_ADDR 0x0100007f  /* 127.0.0.1 as the u32 read from network order */
#endif

/* Lab pod IPv4 (network order) -> endpoint id, for the destination's ingress
 * policy. Written by the agent's L7 plugin for every endpoint. */
struct l7_ep_key {
    __u32 ipv4;
};

struct l7_ep_value {
    __u32 ep_id;
    __u32 pad;
};

BPF_TABLE_PINNED("hash", struct l7_ep_key, struct l7_ep_value, l7_endpoints, ENDPOINTS_MAX,
                 PIN_DIR "/l7_endpoints");

/* The proxy port of the destination pod's ingress entry for this client, or
 * 0. Deny wins (no redirect: the destination's to-container drops it). */
static __always_inline __u16 l7_ingress_proxy_port(__u8 gen, __u32 daddr, __u32 client_identity,
                                                   __u16 dport_be)
{
    struct l7_ep_key ek = {.ipv4 = daddr};
    struct l7_ep_value *dst = l7_endpoints.lookup(&ek);
    if (!dst)
        return 0;
    struct policy_key k = {};
    k.prefixlen = WB_POLICY_PREFIX_FULL;
    k.generation = gen;
    k.direction = WB_DIR_INGRESS;
    k.ep_id = (__u16)dst->ep_id;
    k.identity = client_identity;
    k.proto = IPPROTO_TCP;
    k.dport = dport_be;
    struct policy_value *by_peer = policy.lookup(&k);
    k.identity = 0;
    struct policy_value *by_any = policy.lookup(&k);
    if ((by_peer && by_peer->deny) || (by_any && by_any->deny))
        return 0;
    struct policy_value *decided = by_peer ? by_peer : by_any;
    return decided ? decided->proxy_port : 0;
}

/* Hand the packet to the proxy: the connection's accepted socket when it
 * exists, else the proxy's listener. Returns 0 or a WB_DROP_* reason. */
static __always_inline __u16 l7_assign(struct __sk_buff *skb, const struct pkt *p, __u16 proxy_port)
{
    struct bpf_sock_tuple t = {};
    t.ipv4.saddr = p->saddr;
    t.ipv4.daddr = p->daddr;
    t.ipv4.sport = p->sport;
    t.ipv4.dport = p->dport;
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    if (sk && (sk->state == BPF_TCP_LISTEN || sk->state == BPF_TCP_TIME_WAIT)) {
        bpf_sk_release(sk);
        sk = 0;
    }
    if (!sk) {
        t.ipv4.saddr = 0;
        t.ipv4.sport = 0;
        t.ipv4.daddr = L7_PROXY_ADDR;
        t.ipv4.dport = bpf_htons(proxy_port);
        sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
        if (!sk)
            return WB_DROP_SOCKET_LOOKUP_FAILED;
    }
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err)
        return WB_DROP_SOCKET_ASSIGN_FAILED;
    skb->mark = WB_MARK_MAGIC_TO_PROXY;
    return 0;
}

/* The client identity of a proxy upstream packet (to-container), or 0. */
static __always_inline __u32 l7_proxy_identity(const struct __sk_buff *skb)
{
    if ((skb->mark & WB_MARK_MAGIC_MASK) != WB_MARK_MAGIC_FROM_PROXY)
        return 0;
    return skb->mark >> 16;
}

#endif /* WB_L7_H */
