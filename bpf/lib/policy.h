/* Policy lookup for a new connection (Cilium semantics, docs/datapath.md).
 *
 * Two LPM lookups in the active generation: one for the peer's identity and
 * one for identity 0 (entries that apply to any peer). Within one lookup the
 * longest prefix wins; the writer stores an allow that lies under a covering
 * deny as a deny, so "deny wins" holds inside a lookup as well. Across the two
 * lookups a deny from either wins; otherwise an allow from either admits. */
#ifndef WB_POLICY_H
#define WB_POLICY_H

#include "maps.h"

#define WB_POLICY_ALLOW        0
#define WB_POLICY_NO_MATCH     1  /* enforced, nothing allows: 133 */
#define WB_POLICY_DENY_MATCH   2  /* an explicit deny: 181 */

struct policy_result {
    int    outcome;       /* WB_POLICY_* */
    __u8   match_type;
    __u16  proxy_port;
    __u32  cookie;        /* policy_value.cookie of the deciding entry; 0 when none decided */
};

static __always_inline __u8 active_generation(void)
{
    __u32 zero = 0;
    struct policy_state *st = policy_state.lookup(&zero);
    return st ? (__u8)st->generation : 0;
}

static __always_inline int policy_enforced(__u8 gen, __u8 dir, __u16 ep_id)
{
    struct enforce_key k = {.ep_id = ep_id, .generation = gen, .direction = dir};
    return policy_enforce.lookup(&k) != 0;
}

static __always_inline void policy_count(struct policy_value *v, __u32 len)
{
    __sync_fetch_and_add(&v->packets, 1);
    __sync_fetch_and_add(&v->bytes, len);
}

/* What the policy says about (peer, proto, port) for one endpoint and
 * direction, without counting: two LPM lookups (the peer's identity and
 * identity 0, any peer); a deny from either wins. Returns the deciding entry. */
static __always_inline struct policy_value *policy_decide(__u8 gen, __u8 dir, __u16 ep_id, __u32 peer_identity,
                                                          __u8 proto, __u16 dport_be, struct policy_result *res)
{
    struct policy_key k = {};
    k.prefixlen = WB_POLICY_PREFIX_FULL;
    k.generation = gen;
    k.direction = dir;
    k.ep_id = ep_id;
    k.identity = peer_identity;
    k.proto = proto;
    k.dport = dport_be;
    struct policy_value *by_peer = policy.lookup(&k);
    k.identity = 0;
    struct policy_value *by_any = policy.lookup(&k);

    struct policy_value *decided = 0;
    if (by_peer && by_peer->deny)
        decided = by_peer;
    else if (by_any && by_any->deny)
        decided = by_any;
    if (decided) {
        res->outcome = WB_POLICY_DENY_MATCH;
    } else {
        decided = by_peer ? by_peer : by_any;
        res->outcome = decided ? WB_POLICY_ALLOW : WB_POLICY_NO_MATCH;
    }
    res->match_type = decided ? decided->match_type : WB_MATCH_NONE;
    res->proxy_port = decided ? decided->proxy_port : 0;
#ifdef WB_NO_POLICY_COOKIE
    res->cookie = WB_POLICY_COOKIE_NONE;  /* bench only: the program without attribution */
#else
    res->cookie = decided ? decided->cookie : WB_POLICY_COOKIE_NONE;
#endif
    return decided;
}

/* policy_decide for the connection being judged: the deciding entry counts it. */
static __always_inline void policy_lookup(__u8 gen, __u8 dir, __u16 ep_id, __u32 peer_identity,
                                          __u8 proto, __u16 dport_be, __u32 len,
                                          struct policy_result *res)
{
    struct policy_value *decided = policy_decide(gen, dir, ep_id, peer_identity, proto, dport_be, res);
    if (decided)
        policy_count(decided, len);
}

#endif /* WB_POLICY_H */
