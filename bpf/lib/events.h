/* Flow events to user space through a BPF ring buffer.
 *
 * The ring is not pinned (BCC cannot pin one): it belongs to one compile. A
 * restarted agent compiles again and replaces the TC filters, so the programs
 * that then run write into the new agent's ring. Records that cannot be
 * reserved are counted in events_lost (per CPU). */
#ifndef WB_EVENTS_H
#define WB_EVENTS_H

#include "maps.h"
#include "parse.h"

#ifndef EVENTS_RING_PAGES
#define EVENTS_RING_PAGES 256  /* 1 MiB with 4 KiB pages; must be a power of two */
#endif

BPF_RINGBUF_OUTPUT(events, EVENTS_RING_PAGES);

/* What the hook knows about the packet being judged, for the records. */
struct flow_ctx {
    __u32 src_identity;
    __u32 dst_identity;
    __u32 ifindex;
    __u16 ep_id;
    __u8  direction;
    __u8  is_reply;
};

/* ``cookie``: the deciding policy entry's cookie (policy-verdict and drop
 * events a policy decided), else WB_POLICY_COOKIE_NONE. */
static __always_inline void emit_event(const struct pkt *p, const struct flow_ctx *fc, __u8 type,
                                       __u8 verdict, __u16 reason, __u8 match_type,
                                       __u16 proxy_port, const struct ct_value *ct, __u32 cookie)
{
    struct flow_event *ev = events.ringbuf_reserve(sizeof(struct flow_event));
    if (!ev) {
        __u32 zero = 0;
        __u64 *lost = events_lost.lookup(&zero);
        if (lost)
            *lost += 1;
        return;
    }
    ev->ktime_ns = bpf_ktime_get_ns();
    if (ct) {
        ev->packets = ct->packets;
        ev->bytes = ct->bytes;
        ev->reply_packets = ct->reply_packets;
        ev->reply_bytes = ct->reply_bytes;
    } else {
        ev->packets = 1;
        ev->bytes = p->len;
        ev->reply_packets = 0;
        ev->reply_bytes = 0;
    }
    ev->saddr = p->saddr;
    ev->daddr = p->daddr;
    ev->src_identity = fc->src_identity;
    ev->dst_identity = fc->dst_identity;
    ev->ifindex = fc->ifindex;
    ev->policy_cookie = cookie;
    ev->sport = bpf_ntohs(p->sport);
    ev->dport = bpf_ntohs(p->dport);
    ev->ep_id = fc->ep_id;
    ev->proxy_port = proxy_port;
    ev->drop_reason = reason;
    ev->proto = p->proto;
    ev->tcp_flags = p->tcp_flags;
    ev->event_type = type;
    ev->direction = fc->direction;
    ev->is_reply = fc->is_reply;
    ev->verdict = verdict;
    ev->match_type = match_type;
    /* ring memory is not zeroed: every byte is written */
    __builtin_memset(ev->pad, 0, sizeof(ev->pad));
    events.ringbuf_submit(ev, 0);
}

#endif /* WB_EVENTS_H */
