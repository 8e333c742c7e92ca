/* Connection tracking: LRU hash keyed by the first packet's 5-tuple and the
 * endpoint direction that judged it.
 *
 * Why per direction: a pod-to-pod connection on this node is judged twice,
 * by the client's egress and by the server's ingress, each with its own
 * policy; each side keeps its own entry and counters. A reply is found by
 * reversing its tuple and looking in the opposite direction.
 *
 * Established connections are not re-evaluated (a new policy does not cut
 * them, as in Cilium). An entry stops counting as established when it is
 * idle past its lifetime, or when a TCP connection that ended is reused by a
 * fresh SYN. */
#ifndef WB_CONNTRACK_H
#define WB_CONNTRACK_H

#include "maps.h"
#include "parse.h"

#ifndef CT_LIFETIME_TCP_NS
#define CT_LIFETIME_TCP_NS (21600ULL * 1000000000ULL)  /* Cilium: 6 h */
#endif
#ifndef CT_LIFETIME_NONTCP_NS
#define CT_LIFETIME_NONTCP_NS (60ULL * 1000000000ULL)
#endif
#ifndef CT_CLOSE_NS
#define CT_CLOSE_NS (10ULL * 1000000000ULL)
#endif
#ifndef CT_REPORT_INTERVAL_NS
#define CT_REPORT_INTERVAL_NS (5ULL * 1000000000ULL)  /* conn-stats events of live connections */
#endif

#define WB_CT_NEW         0
#define WB_CT_ESTABLISHED 1
#define WB_CT_REPLY       2

static __always_inline void ct_key_of(const struct pkt *p, __u8 dir, struct ct_key *k)
{
    k->saddr = p->saddr;
    k->daddr = p->daddr;
    k->sport = p->sport;
    k->dport = p->dport;
    k->proto = p->proto;
    k->direction = dir;
    k->pad = 0;
}

static __always_inline void ct_reverse_key_of(const struct pkt *p, __u8 dir, struct ct_key *k)
{
    k->saddr = p->daddr;
    k->daddr = p->saddr;
    k->sport = p->dport;
    k->dport = p->sport;
    k->proto = p->proto;
    k->direction = dir == WB_DIR_INGRESS ? WB_DIR_EGRESS : WB_DIR_INGRESS;
    k->pad = 0;
}

static __always_inline int ct_usable(const struct ct_value *ct, const struct pkt *p, __u64 now)
{
    __u64 idle = now - ct->last_seen_ns;
    if (ct->flags & (WB_CT_RST | WB_CT_ENDED)) {
        /* a new SYN on an ended connection's tuple is a new connection */
        if ((p->tcp_flags & (WB_TCP_SYN | WB_TCP_ACK)) == WB_TCP_SYN)
            return 0;
        return idle < CT_CLOSE_NS;
    }
    if (p->proto == IPPROTO_TCP)
        return idle < CT_LIFETIME_TCP_NS;
    return idle < CT_LIFETIME_NONTCP_NS;
}

/* Finds the connection of this packet. Returns WB_CT_NEW, _ESTABLISHED or
 * _REPLY; *out points at the live entry and *key holds its key. */
static __always_inline int ct_lookup(const struct pkt *p, __u8 dir, __u64 now, struct ct_key *key,
                                     struct ct_value **out)
{
    struct ct_value *ct;

    ct_key_of(p, dir, key);
    ct = conntrack.lookup(key);
    if (ct && ct_usable(ct, p, now)) {
        *out = ct;
        return WB_CT_ESTABLISHED;
    }
    ct_reverse_key_of(p, dir, key);
    ct = conntrack.lookup(key);
    if (ct && ct_usable(ct, p, now)) {
        *out = ct;
        return WB_CT_REPLY;
    }
    ct_key_of(p, dir, key);
    *out = 0;
    return WB_CT_NEW;
}

/* An ICMP error about a packet of a tracked connection belongs to it: the
 * quoted packet travelled the other way, so its tuple is the connection's
 * original one when looked up in the opposite direction (or the same one,
 * for an error about a reply). */
static __always_inline struct ct_value *ct_related(const struct pkt *p, __u8 dir, __u64 now)
{
    if (!p->icmp_error)
        return 0;
    struct ct_key k = {};
    k.saddr = p->inner_saddr;
    k.daddr = p->inner_daddr;
    k.sport = p->inner_sport;
    k.dport = p->inner_dport;
    k.proto = p->inner_proto;
    k.direction = dir == WB_DIR_INGRESS ? WB_DIR_EGRESS : WB_DIR_INGRESS;
    struct ct_value *ct = conntrack.lookup(&k);
    if (ct && now - ct->last_seen_ns < CT_LIFETIME_NONTCP_NS)
        return ct;
    /* an error about a reply: the quoted packet is the reply, reversed */
    k.saddr = p->inner_daddr;
    k.daddr = p->inner_saddr;
    k.sport = p->inner_dport;
    k.dport = p->inner_sport;
    k.direction = dir;
    ct = conntrack.lookup(&k);
    if (ct && now - ct->last_seen_ns < CT_LIFETIME_NONTCP_NS)
        return ct;
    return 0;
}

/* Accounts the packet on its connection. Returns the WB_EVENT_CONN_* event
 * to send now (0 for none): the end of a TCP connection once, or periodic
 * totals while it lives. */
static __always_inline __u8 ct_account(struct ct_value *ct, const struct pkt *p, int is_reply, __u64 now)
{
    if (is_reply) {
        __sync_fetch_and_add(&ct->reply_packets, 1);
        __sync_fetch_and_add(&ct->reply_bytes, p->len);
    } else {
        __sync_fetch_and_add(&ct->packets, 1);
        __sync_fetch_and_add(&ct->bytes, p->len);
    }
    ct->last_seen_ns = now;
    if (p->proto == IPPROTO_TCP && (p->tcp_flags & (WB_TCP_FIN | WB_TCP_RST))) {
        __u8 flags = ct->flags;
        if (p->tcp_flags & WB_TCP_RST)
            flags |= WB_CT_RST;
        if (p->tcp_flags & WB_TCP_FIN)
            flags |= is_reply ? WB_CT_FIN_REPLY : WB_CT_FIN_ORIG;
        int ended = (flags & WB_CT_RST) ||
                    ((flags & (WB_CT_FIN_ORIG | WB_CT_FIN_REPLY)) == (WB_CT_FIN_ORIG | WB_CT_FIN_REPLY));
        if (ended && !(flags & WB_CT_ENDED)) {
            /* plain store: two CPUs racing here may both report; harmless */
            ct->flags = flags | WB_CT_ENDED;
            ct->last_report_ns = now;
            return WB_EVENT_CONN_END;
        }
        ct->flags = flags;
    }
    if (!(ct->flags & WB_CT_ENDED) && now - ct->last_report_ns >= CT_REPORT_INTERVAL_NS) {
        ct->last_report_ns = now;
        return WB_EVENT_CONN_STATS;
    }
    return 0;
}

static __always_inline void ct_create(struct ct_key *key, const struct pkt *p, __u64 now,
                                      __u32 src_identity, __u32 dst_identity, __u16 ep_id,
                                      __u8 verdict, __u8 match_type, __u16 proxy_port)
{
    struct ct_value ct = {};
    ct.created_ns = now;
    ct.last_seen_ns = now;
    ct.last_report_ns = now;
    ct.packets = 1;
    ct.bytes = p->len;
    ct.src_identity = src_identity;
    ct.dst_identity = dst_identity;
    ct.ep_id = ep_id;
    ct.proxy_port = proxy_port;
    ct.verdict = verdict;
    ct.match_type = match_type;
    if (p->proto == IPPROTO_TCP && (p->tcp_flags & WB_TCP_RST))
        ct.flags = WB_CT_RST | WB_CT_ENDED;
    conntrack.update(key, &ct);
}

#endif /* WB_CONNTRACK_H */
