/* Socket-level load balancing for ClusterIP services (cgroup sock_addr hooks).
 *
 * Attached to every pod's cgroup. connect4 (TCP and connected UDP) and
 * sendmsg4 (unconnected UDP) rewrite a service frontend to one backend, picked
 * at random per socket; getpeername4 and recvmsg4 translate the backend back
 * to the frontend so the application only ever sees the ClusterIP, as with
 * Cilium's socket LB. One compile per lab: services and backends are map
 * entries (lib/lb.h).
 */
#include "lib/maps.h"   /* not used here: one compile also gives the agent the ipcache/endpoints tables */
#include "lib/lb.h"

#define SYS_REJECT 0
#define SYS_PROCEED 1

static __always_inline int lb4_translate(struct bpf_sock_addr *ctx, int sticky)
{
    struct lb4_key key = {};
    key.address = ctx->user_ip4;
    key.dport = (__u16)ctx->user_port;
    key.proto = (__u8)ctx->protocol;

    struct lb4_service *svc = lb4_services.lookup(&key);
    if (!svc)
        return SYS_PROCEED;                 /* not a service address */
    if (svc->count == 0)
        return SYS_REJECT;                  /* no backend: fail fast (EPERM), like Cilium */

    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct lb4_sock_revnat rn = {};
    struct lb4_sock_revnat *prev = sticky ? lb4_sock_revnat.lookup(&cookie) : 0;
    if (prev && prev->vip == key.address && prev->vport == key.dport && prev->svc_id == svc->svc_id) {
        rn = *prev;                         /* next datagram of the same UDP socket: same backend */
    } else {
        struct lb4_backend_key bkey = {};
        bkey.svc_id = svc->svc_id;
        bkey.slot = bpf_get_prandom_u32() % svc->count;
        struct lb4_backend *backend = lb4_backends.lookup(&bkey);
        if (!backend)
            return SYS_REJECT;
        rn.vip = key.address;
        rn.vport = key.dport;
        rn.backend = backend->address;
        rn.bport = backend->port;
        rn.svc_id = svc->svc_id;
        lb4_sock_revnat.update(&cookie, &rn);
    }
    ctx->user_ip4 = rn.backend;
    ctx->user_port = rn.bport;
    return SYS_PROCEED;
}

/* Backend -> frontend, for the address the application is shown. */
static __always_inline void lb4_reverse(struct bpf_sock_addr *ctx)
{
    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct lb4_sock_revnat *rn = lb4_sock_revnat.lookup(&cookie);
    if (rn && rn->backend == ctx->user_ip4 && rn->bport == (__u16)ctx->user_port) {
        ctx->user_ip4 = rn->vip;
        ctx->user_port = rn->vport;
    }
}

int sock4_connect(struct bpf_sock_addr *ctx)
{
    return lb4_translate(ctx, 0);
}

int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
    return lb4_translate(ctx, 1);
}

int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
    lb4_reverse(ctx);
    return SYS_PROCEED;
}

int sock4_getpeername(struct bpf_sock_addr *ctx)
{
    lb4_reverse(ctx);
    return SYS_PROCEED;
}
