/* IPv4 fragments: the first fragment records its datagram's ports, later
 * fragments borrow them, so conntrack and policy judge every fragment as its
 * datagram. A later fragment whose first one was not seen is dropped with
 * Cilium's 175 (DROP_FRAG_NOT_FOUND). */
#ifndef WB_FRAGMENTS_H
#define WB_FRAGMENTS_H

#include "maps.h"
#include "parse.h"

/* 0: ok (ports filled in for a later fragment); else the drop reason. */
static __always_inline __u16 frag_ports(struct pkt *p)
{
    if (p->frag == WB_FRAG_NONE)
        return 0;
    struct ipv4_frag_key k = {.saddr = p->saddr, .daddr = p->daddr, .id = p->ip_id, .proto = p->proto};
    if (p->frag == WB_FRAG_FIRST) {
        struct ipv4_frag_ports ports = {.sport = p->sport, .dport = p->dport};
        ipv4_frags.update(&k, &ports);
        return 0;
    }
    struct ipv4_frag_ports *found = ipv4_frags.lookup(&k);
    if (!found)
        return WB_DROP_FRAG_NOT_FOUND;
    p->sport = found->sport;
    p->dport = found->dport;
    return 0;
}

#endif /* WB_FRAGMENTS_H */
