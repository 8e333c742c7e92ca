/* Packet parsing for the lxc programs: Ethernet + IPv4 + the first bytes of
 * TCP/UDP/ICMP, through bpf_skb_load_bytes so that non-linear skbs parse too
 * and the verifier sees no pointer arithmetic on packet data. */
#ifndef WB_PARSE_H
#define WB_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>

#define WB_TCP_FIN 0x01
#define WB_TCP_SYN 0x02
#define WB_TCP_RST 0x04
#define WB_TCP_ACK 0x10

#define WB_ICMP_ECHOREPLY 0
#define WB_ICMP_ECHO      8
#define WB_ICMP_DEST_UNREACH  3
#define WB_ICMP_TIME_EXCEEDED 11
#define WB_ICMP_PARAMETERPROB 12

struct pkt {
    __u32 saddr;      /* network order */
    __u32 daddr;
    __u16 sport;      /* network order; ICMP echo: id in sport (request) or dport (reply) */
    __u16 dport;
    __u8  proto;
    __u8  tcp_flags;
    __u16 ip_id;      /* network order; for fragment tracking */
    __u32 len;        /* skb->len */
    __u8  frag;       /* WB_FRAG_* */
    __u8  icmp_error; /* 1: ICMP error quoting a packet (inner tuple below) */
    __u8  pad[2];
    /* ICMP errors: the quoted packet's tuple, as it was sent */
    __u32 inner_saddr;
    __u32 inner_daddr;
    __u16 inner_sport;
    __u16 inner_dport;
    __u8  inner_proto;
    __u8  pad2[3];
};

#define WB_FRAG_NONE  0
#define WB_FRAG_FIRST 1  /* offset 0, more fragments follow: carries the L4 header */
#define WB_FRAG_LATER 2  /* offset > 0: no L4 header */

/* An ICMP error quotes the IP header and first 8 bytes of the packet that
 * caused it: enough to find that packet's connection ("related", as
 * conntrack calls it). */
static __always_inline void parse_icmp_error(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
    struct iphdr inner;
    __u8 ports[4];

    if (bpf_skb_load_bytes(skb, off, &inner, sizeof(inner)) < 0)
        return;
    p->inner_saddr = inner.saddr;
    p->inner_daddr = inner.daddr;
    p->inner_proto = inner.protocol;
    p->inner_sport = 0;
    p->inner_dport = 0;
    if (inner.protocol == IPPROTO_TCP || inner.protocol == IPPROTO_UDP) {
        if (bpf_skb_load_bytes(skb, off + (inner.ihl & 0xf) * 4, ports, sizeof(ports)) < 0)
            return;
        __builtin_memcpy(&p->inner_sport, &ports[0], 2);
        __builtin_memcpy(&p->inner_dport, &ports[2], 2);
    }
    p->icmp_error = 1;
}

/* The first 8 bytes after an option-less IPv4 header: UDP's ports, ICMP's
 * type..id, TCP's ports. Every IPv4 packet we parse has at least these, so one
 * helper call reads the IP header and them together (the hot path: each helper
 * call costs about as much as a map lookup). */
#define WB_L4_PEEK 8

struct ipv4_peek {
    struct iphdr ip;
    __u8 l4[WB_L4_PEEK];
};

/* 1: IPv4 parsed into p; 0: not IPv4 (ARP, IPv6, ...) or too short. */
static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p)
{
    struct ipv4_peek pk;

    /* skb->protocol is the Ethernet type the stack already read: no load needed */
    if (skb->protocol != bpf_htons(ETH_P_IP))
        return 0;
    int peeked = bpf_skb_load_bytes(skb, ETH_HLEN, &pk, sizeof(pk)) == 0;
    if (!peeked && bpf_skb_load_bytes(skb, ETH_HLEN, &pk.ip, sizeof(pk.ip)) < 0)
        return 0;
    struct iphdr ip = pk.ip;
    p->saddr = ip.saddr;
    p->daddr = ip.daddr;
    p->proto = ip.protocol;
    p->len = skb->len;
    p->sport = 0;
    p->dport = 0;
    p->tcp_flags = 0;
    p->ip_id = ip.id;
    p->frag = WB_FRAG_NONE;
    p->icmp_error = 0;

    /* Later fragments carry no L4 header: their ports come from the first
     * fragment (fragments.h). */
    if (ip.frag_off & bpf_htons(0x1fff)) {
        p->frag = WB_FRAG_LATER;
        return 1;
    }
    if (ip.frag_off & bpf_htons(0x2000))
        p->frag = WB_FRAG_FIRST;
    __u32 l4 = ETH_HLEN + (ip.ihl & 0xf) * 4;
    __u8 hdr[WB_L4_PEEK];
    if (peeked && (ip.ihl & 0xf) == 5)
        __builtin_memcpy(hdr, pk.l4, sizeof(hdr));        /* the common case: already read */
    else if (bpf_skb_load_bytes(skb, l4, hdr, sizeof(hdr)) < 0)
        return 1;                                          /* too short for ports: IP only */
    if (ip.protocol == IPPROTO_TCP) {
        __builtin_memcpy(&p->sport, &hdr[0], 2);
        __builtin_memcpy(&p->dport, &hdr[2], 2);
        __u8 flags;
        if (bpf_skb_load_bytes(skb, l4 + 13, &flags, 1) == 0)
            p->tcp_flags = flags;
    } else if (ip.protocol == IPPROTO_UDP) {
        __builtin_memcpy(&p->sport, &hdr[0], 2);
        __builtin_memcpy(&p->dport, &hdr[2], 2);
    } else if (ip.protocol == IPPROTO_ICMP) {
        /* Echo request and reply share the id: request keys it as source
         * "port", reply as destination, so the reply's reversed tuple finds
         * the request's conntrack entry. */
        if (hdr[0] == WB_ICMP_ECHO)
            __builtin_memcpy(&p->sport, &hdr[4], 2);
        else if (hdr[0] == WB_ICMP_ECHOREPLY)
            __builtin_memcpy(&p->dport, &hdr[4], 2);
        else if (hdr[0] == WB_ICMP_DEST_UNREACH || hdr[0] == WB_ICMP_TIME_EXCEEDED ||
                 hdr[0] == WB_ICMP_PARAMETERPROB)
            parse_icmp_error(skb, l4 + 8, p);
    }
    return 1;
}

#endif /* WB_PARSE_H */
