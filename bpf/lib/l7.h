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
 * connection is assigned too. UDP (the DNS proxy: egress entries of DNS
 * rules carry its port) goes the same way, to the proxy's UDP socket.
 * The proxy's accepted socket has the original destination as its local
 * address; its replies leave with that source and
 * pass the client's to-container as replies of the client's connection.
 *
 * Why socket assignment: the destination address stays untouched (no NAT,
 * no reverse translation to keep), the backend and the client both see
 * their usual addresses, and bpf_sk_assign only steers delivery; the mark
 * below makes the node route the packet locally so that the assigned
 * socket receives it (ip rule fwmark 0x200/0xf00 -> local table).
 *
 * The proxy's upstream connections leave from the node with SO_MARK =
 * FROM_PROXY magic | the client identity (bits 0-15 in mark bits 16-31,
 * 16-23 in bits 0-7, 24-27 in bits 12-15: CIDR identities are 1 << 24 | n);
 * to-container takes the peer identity from that mark, so the backend's
 * L3/L4 check sees the real client. Pods cannot forge marks: veth scrubs
 * skb->mark between netns.
 *
 * Clients outside the pods (the lab's world netns) enter the node through
 * world0, where no lxc program runs: l7_from_world (TC ingress on world0,
 * attached by the agent's L7 plugin) redirects their connections the same
 * way, statelessly: an existing accepted proxy socket for the tuple takes
 * the packet; a SYN whose destination's ingress entry carries a proxy port
 * goes to the listener. */
#ifndef WB_L7_H
#define WB_L7_H

#include "maps.h"
#include "parse.h"
#include "events.h"
#include "verdict.h"
#include "policy.h"

#define WB_MARK_MAGIC_MASK       0x0F00
#define WB_MARK_MAGIC_TO_PROXY   0x0200  /* set here: the node delivers the packet locally */
#define WB_MARK_MAGIC_FROM_PROXY 0x0A00  /* set by the proxy (SO_MARK) on upstream sockets */

#define WB_DROP_SOCKET_LOOKUP_FAILED 178  /* Cilium: the proxy's socket is not there */
#define WB_DROP_SOCKET_ASSIGN_FAILED 179

#ifndef L7_PROXY_ADDR
#define L7_PROXY_ADDR 0x0100007f  /* 127.0.0.1 as the u32 read from network order */
#endif

/* Whether this lab has an L7 proxy: set once by the agent's L7 service when
 * its proxy listens, and never cleared while the lab lives, so a dead agent's
 * redirects fail closed (no socket: drop) rather than bypass the proxy. A
 * datapath without it (test beds) never redirects. */
struct l7_config {
    __u32 proxy_enabled;
};

BPF_TABLE_PINNED("array", __u32, struct l7_config, l7_config, 1, PIN_DIR "/l7_config");

static __always_inline int l7_proxy_enabled(void)
{
    __u32 zero = 0;
    struct l7_config *cfg = l7_config.lookup(&zero);
    return cfg && cfg->proxy_enabled;
}

/* The proxy port of the destination pod's ingress entry for this client, or
 * 0. Deny wins (no redirect: the destination's to-container drops it). */
static __always_inline __u16 l7_ingress_proxy_port(__u8 gen, __u32 daddr, __u32 client_identity,
                                                   __u16 dport_be)
{
    if (!l7_proxy_enabled())
        return 0;
    struct local_ep_key ek = {.addr = daddr};
    struct local_ep_value *dst = local_endpoints.lookup(&ek);
    if (!dst)
        return 0;
    struct policy_result res = {};
    policy_decide(gen, WB_DIR_INGRESS, (__u16)dst->ep_id, client_identity, IPPROTO_TCP, dport_be, &res);
    return res.outcome == WB_POLICY_ALLOW ? res.proxy_port : 0;
}

/* Give the packet to ``sk`` (a reference the caller looked up; released
 * here) and mark it for local delivery. Returns 0 or a WB_DROP_* reason. */
static __always_inline __u16 l7_assign_to(struct __sk_buff *skb, struct bpf_sock *sk)
{
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err)
        return WB_DROP_SOCKET_ASSIGN_FAILED;
    skb->mark = WB_MARK_MAGIC_TO_PROXY;
    return 0;
}

/* A datagram for the DNS proxy: its one UDP socket on 127.0.0.1:<port>
 * takes every redirected datagram (there is no per-flow socket to find); it
 * reads the original destination with IP_RECVORIGDSTADDR. */
static __always_inline __u16 l7_assign_udp(struct __sk_buff *skb, __u16 proxy_port)
{
    struct bpf_sock_tuple t = {};
    t.ipv4.daddr = L7_PROXY_ADDR;
    t.ipv4.dport = bpf_htons(proxy_port);
    struct bpf_sock *sk = bpf_sk_lookup_udp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    if (!sk)
        return WB_DROP_SOCKET_LOOKUP_FAILED;
    return l7_assign_to(skb, sk);
}

/* Hand the packet to the proxy: the connection's accepted socket when it
 * exists, else the proxy's listener (UDP: the proxy's socket). Returns 0 or
 * a WB_DROP_* reason. */
static __always_inline __u16 l7_assign(struct __sk_buff *skb, const struct pkt *p, __u16 proxy_port)
{
    if (p->proto == IPPROTO_UDP)
        return l7_assign_udp(skb, proxy_port);
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
    return l7_assign_to(skb, sk);
}

/* The client identity of a proxy upstream packet (to-container), or 0. */
static __always_inline __u32 l7_proxy_identity(const struct __sk_buff *skb)
{
    __u32 mark = skb->mark;
    if ((mark & WB_MARK_MAGIC_MASK) != WB_MARK_MAGIC_FROM_PROXY)
        return 0;
    return (mark >> 16) | (mark & 0xFF) << 16 | ((mark >> 12) & 0xF) << 24;
}

/* TC ingress on world0 (see the header comment). Never drops: what it does
 * not redirect goes on to the lxc programs as before. */
int l7_from_world(struct __sk_buff *skb)
{
    struct pkt p = {};
    if (!parse_ipv4(skb, &p) || p.proto != IPPROTO_TCP)
        return TC_ACT_OK;
    struct bpf_sock_tuple t = {};
    t.ipv4.saddr = p.saddr;
    t.ipv4.daddr = p.daddr;
    t.ipv4.sport = p.sport;
    t.ipv4.dport = p.dport;
    struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    if (sk) {
        if (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT) {
            long err = bpf_sk_assign(skb, sk, 0);
            bpf_sk_release(sk);
            if (!err)
                skb->mark = WB_MARK_MAGIC_TO_PROXY;
            return TC_ACT_OK;
        }
        bpf_sk_release(sk);
    }
    if ((p.tcp_flags & (WB_TCP_SYN | WB_TCP_ACK)) != WB_TCP_SYN)
        return TC_ACT_OK;
    struct ipcache_key ik = {.prefixlen = 32, .addr = p.saddr};
    struct ipcache_value *iv = ipcache.lookup(&ik);
    __u32 identity = iv ? iv->identity : WB_ID_WORLD;
    __u16 proxy_port = l7_ingress_proxy_port(active_generation(), p.daddr, identity, p.dport);
    if (!proxy_port)
        return TC_ACT_OK;
    __u16 reason = l7_assign(skb, &p, proxy_port);
    struct local_ep_key ek = {.addr = p.daddr};
    struct local_ep_value *dst = local_endpoints.lookup(&ek);
    struct flow_ctx fc = {};
    fc.src_identity = identity;
    fc.dst_identity = dst ? dst->identity : 0;
    fc.ifindex = skb->ifindex;
    fc.ep_id = dst ? (__u16)dst->ep_id : 0;
    fc.direction = WB_DIR_INGRESS;
    if (reason) {
        count_verdict(WB_VERDICT_DROPPED, WB_DIR_INGRESS, reason, p.len);
        emit_event(&p, &fc, WB_EVENT_DROP, WB_VERDICT_DROPPED, reason, WB_MATCH_NONE, 0, 0,
                   WB_POLICY_COOKIE_NONE);
        return TC_ACT_SHOT;  /* the policy wants the proxy and it is not there: fail closed */
    }
    emit_event(&p, &fc, WB_EVENT_TRACE, WB_VERDICT_REDIRECTED, 0, WB_MATCH_NONE, proxy_port, 0,
               WB_POLICY_COOKIE_NONE);
    return TC_ACT_OK;
}

#endif /* WB_L7_H */
