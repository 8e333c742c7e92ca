/* The endpoint datapath: two TC programs on each pod's host-side lxc device
 * in the node netns (Cilium's bpf_lxc.c in miniature).
 *
 *   from_container  TC ingress on lxc  = packets the pod sends  = pod EGRESS
 *   to_container    TC egress on lxc   = packets to the pod     = pod INGRESS
 *
 * One compile per lab: everything endpoint-specific comes from maps (the
 * endpoints map keyed by skb->ifindex, the ipcache, the policy map), so a
 * new pod needs map entries, not a compile.
 *
 * Per packet: parse -> (egress) anti-spoofing -> conntrack; established
 * connections and replies pass without ipcache or policy lookups; a new
 * connection gets the peer identity, a policy verdict (or AUDIT), a
 * conntrack entry when admitted, and events. Non-IPv4 (ARP, IPv6) passes untouched. */
#include <uapi/linux/bpf.h>
#include <linux/pkt_cls.h>

#include "lib/types.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/verdict.h"
#include "lib/events.h"
#include "lib/fragments.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/l7.h"

/* ``cookie``: the deny entry's cookie when a deny rule decided, else WB_POLICY_COOKIE_NONE. */
static __always_inline int drop(const struct pkt *p, const struct flow_ctx *fc, __u16 reason, __u32 cookie)
{
    count_verdict(WB_VERDICT_DROPPED, fc->direction, reason, p->len);
    emit_event(p, fc, WB_EVENT_DROP, WB_VERDICT_DROPPED, reason, WB_MATCH_NONE, 0, 0, cookie);
    return TC_ACT_SHOT;
}

/* A conn-stats/conn-end record describes the connection: its first packet's
 * tuple and the identities of its original direction. */
static __always_inline void emit_conn(const struct ct_key *key, const struct ct_value *ct,
                                      const struct pkt *p, const struct flow_ctx *fc, __u8 type)
{
    struct pkt orig = *p;
    struct flow_ctx cfc = *fc;
    orig.saddr = key->saddr;
    orig.daddr = key->daddr;
    orig.sport = key->sport;
    orig.dport = key->dport;
    cfc.src_identity = ct->src_identity;
    cfc.dst_identity = ct->dst_identity;
    cfc.is_reply = 0;
    emit_event(&orig, &cfc, type, ct->verdict, 0, ct->match_type, ct->proxy_port, ct, WB_POLICY_COOKIE_NONE);
}

/* The peer's identity: ipcache (LPM) by the peer's address; addresses the
 * ipcache does not know are "world", as in Cilium. */
static __always_inline __u32 peer_identity_of(const struct pkt *p, __u8 dir)
{
    struct ipcache_key ik = {.prefixlen = 32, .addr = dir == WB_DIR_INGRESS ? p->saddr : p->daddr};
    struct ipcache_value *iv = ipcache.lookup(&ik);
    return iv ? iv->identity : WB_ID_WORLD;
}

/* Established traffic to another pod of the lab: account it on the
 * destination's connection (what its to-container would do) and hand it
 * straight to the pod. New connections, L7 redirects, fragments and ICMP
 * errors return -1 and take the normal path, so the destination's
 * to-container judges every first packet. */
static __always_inline int local_delivery(struct __sk_buff *skb, const struct pkt *p, __u64 now)
{
    if (p->frag != WB_FRAG_NONE || p->icmp_error)
        return -1;
    struct local_ep_key lk = {.addr = p->daddr};
    struct local_ep_value *dst = local_endpoints.lookup(&lk);
    if (!dst)
        return -1;
    struct ct_key key = {};
    struct ct_value *ct = 0;
    int state = ct_lookup(p, WB_DIR_INGRESS, now, &key, &ct);
    if (state == WB_CT_NEW || !ct || ct->proxy_port)
        return -1;
    struct flow_ctx fc = {};
    fc.ifindex = dst->lxc_ifindex;
    fc.ep_id = (__u16)dst->ep_id;
    fc.direction = WB_DIR_INGRESS;
    fc.is_reply = state == WB_CT_REPLY;
    __u8 macs[12];
    __builtin_memcpy(&macs[0], dst->pod_mac, 6);
    __builtin_memcpy(&macs[6], dst->lxc_mac, 6);
    __u32 ifindex = dst->lxc_ifindex;
    if (bpf_skb_store_bytes(skb, 0, macs, sizeof(macs), 0) < 0)
        return -1;
    __u8 report = ct_account(ct, p, fc.is_reply, now);
    if (report)
        emit_conn(&key, ct, p, &fc, report);
    count_verdict(WB_VERDICT_FORWARDED, WB_DIR_INGRESS, 0, p->len);
    return bpf_redirect_peer(ifindex, 0);
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
    struct endpoint_key ek = {.ifindex = skb->ifindex};
    struct endpoint_info *ep = endpoints.lookup(&ek);
    if (!ep)
        return TC_ACT_OK;  /* not an endpoint device (yet): not ours to judge */

    struct pkt p = {};
    if (!parse_ipv4(skb, &p))
        return TC_ACT_OK;  /* ARP, IPv6, ...: pass */

    struct flow_ctx fc = {};
    fc.ifindex = skb->ifindex;
    fc.ep_id = (__u16)ep->ep_id;
    fc.direction = dir;

    if (dir == WB_DIR_EGRESS && p.saddr != ep->ipv4) {
        fc.src_identity = ep->identity;
        fc.dst_identity = peer_identity_of(&p, dir);
        return drop(&p, &fc, WB_DROP_INVALID_SOURCE_IP, WB_POLICY_COOKIE_NONE);
    }

    __u16 frag_drop = frag_ports(&p);
    if (frag_drop) {
        fc.src_identity = dir == WB_DIR_INGRESS ? peer_identity_of(&p, dir) : ep->identity;
        fc.dst_identity = dir == WB_DIR_INGRESS ? ep->identity : peer_identity_of(&p, dir);
        return drop(&p, &fc, frag_drop, WB_POLICY_COOKIE_NONE);
    }

    /* Established connections and replies: no ipcache or policy lookup
     * (the fast path; events of the connection use its stored identities). */
    __u64 now = bpf_ktime_get_ns();
    struct ct_key key = {};
    struct ct_value *ct = 0;
    int state = ct_lookup(&p, dir, now, &key, &ct);
    if (state != WB_CT_NEW && ct) {
        fc.is_reply = state == WB_CT_REPLY;
        __u8 report = ct_account(ct, &p, fc.is_reply, now);
        if (report)
            emit_conn(&key, ct, &p, &fc, report);
        /* a connection redirected to the L7 proxy: every client packet goes there (lib/l7.h) */
        if (dir == WB_DIR_EGRESS && !fc.is_reply && ct->proxy_port) {
            __u16 l7_drop = l7_assign(skb, &p, ct->proxy_port);
            if (l7_drop) {
                fc.src_identity = ct->src_identity;
                fc.dst_identity = ct->dst_identity;
                return drop(&p, &fc, l7_drop, WB_POLICY_COOKIE_NONE);
            }
        }
        count_verdict(WB_VERDICT_FORWARDED, dir, 0, p.len);
        if (dir == WB_DIR_EGRESS && !ct->proxy_port) {
            int delivered = local_delivery(skb, &p, now);
            if (delivered >= 0)
                return delivered;
        }
        return TC_ACT_OK;
    }

    /* ICMP errors about tracked connections (port unreachable, TTL
     * exceeded, ...) pass as replies, without a connection of their own. */
    struct ct_value *related = ct_related(&p, dir, now);
    if (related) {
        count_verdict(WB_VERDICT_FORWARDED, dir, 0, p.len);
        return TC_ACT_OK;
    }

    __u32 peer_identity = peer_identity_of(&p, dir);
    /* the L7 proxy's upstream connection: judged as the client it speaks for (lib/l7.h) */
    __u32 proxied_for = dir == WB_DIR_INGRESS ? l7_proxy_identity(skb) : 0;
    if (proxied_for)
        peer_identity = proxied_for;
    if (dir == WB_DIR_INGRESS) {
        fc.src_identity = peer_identity;
        fc.dst_identity = ep->identity;
    } else {
        fc.src_identity = ep->identity;
        fc.dst_identity = peer_identity;
    }

    /* A new connection: the policy decides. */
    struct policy_result res = {};
    __u8 gen = active_generation();
    policy_lookup(gen, dir, fc.ep_id, peer_identity, p.proto, p.dport, p.len, &res);
    /* Not enforced in this direction (no policy selects it): what no entry
     * allows passes, but a deny entry still wins. */
    if (res.outcome == WB_POLICY_NO_MATCH && !policy_enforced(gen, dir, fc.ep_id)) {
        res.outcome = WB_POLICY_ALLOW;
        res.match_type = WB_MATCH_ALL;
    }
    if (proxied_for)
        res.proxy_port = 0;  /* already through the proxy */
    else if (dir == WB_DIR_EGRESS && p.proto == IPPROTO_TCP && res.outcome == WB_POLICY_ALLOW && !res.proxy_port)
        res.proxy_port = l7_ingress_proxy_port(gen, p.daddr, fc.src_identity, p.dport);

    __u8 verdict = res.proxy_port ? WB_VERDICT_REDIRECTED : WB_VERDICT_FORWARDED;
    __u16 reason = 0;
    if (res.outcome != WB_POLICY_ALLOW) {
        reason = res.outcome == WB_POLICY_DENY_MATCH ? WB_DROP_POLICY_DENY : WB_DROP_POLICY_DENIED;
        if (!(ep->flags & WB_EP_AUDIT)) {
            emit_event(&p, &fc, WB_EVENT_POLICY_VERDICT, WB_VERDICT_DROPPED, reason, res.match_type, 0, 0,
                       res.cookie);
            return drop(&p, &fc, reason, res.cookie);
        }
        /* audit: the packet passes, the would-be reason is reported */
        verdict = WB_VERDICT_AUDIT;
        res.proxy_port = 0;
    }
    emit_event(&p, &fc, WB_EVENT_POLICY_VERDICT, verdict, reason, res.match_type, res.proxy_port, 0, res.cookie);
    ct_create(&key, &p, now, fc.src_identity, fc.dst_identity, fc.ep_id, verdict, res.match_type,
              res.proxy_port);
    /* the trace says what happened to the packet: it went on (audit or not) */
    emit_event(&p, &fc, WB_EVENT_TRACE, res.proxy_port ? WB_VERDICT_REDIRECTED : WB_VERDICT_FORWARDED, 0,
               res.match_type, res.proxy_port, 0, WB_POLICY_COOKIE_NONE);
    if (res.proxy_port && dir == WB_DIR_EGRESS) {
        __u16 l7_drop = l7_assign(skb, &p, res.proxy_port);
        if (l7_drop)
            return drop(&p, &fc, l7_drop, WB_POLICY_COOKIE_NONE);
    }
    count_verdict(verdict, dir, reason, p.len);
    return TC_ACT_OK;
}

int from_container(struct __sk_buff *skb)
{
    return handle(skb, WB_DIR_EGRESS);
}

int to_container(struct __sk_buff *skb)
{
    return handle(skb, WB_DIR_INGRESS);
}
