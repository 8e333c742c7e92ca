/* Socket-level service load balancing: maps and their layouts.
 *
 * A ClusterIP is never seen on the wire: the cgroup sock_addr programs of
 * sock.bpf.c rewrite ClusterIP:port to a backend pod's IP:targetPort when a
 * pod's socket connects (or sends a datagram), and translate back when the
 * application asks who its peer is (getpeername, recvfrom). Pinned under
 * PIN_DIR like every lab map, so a restarted agent and the TC datapath (which
 * names services in flows) see the same entries.
 *
 * Keys hold addresses and ports in network byte order, exactly as the
 * bpf_sock_addr context gives them, so the programs never convert.
 */
#ifndef WB_LB_H
#define WB_LB_H

#ifndef PIN_DIR
#error "PIN_DIR must be passed as a cflag"
#endif
#ifndef LB_SERVICES_MAX
#define LB_SERVICES_MAX 4096
#endif
#ifndef LB_BACKENDS_MAX
#define LB_BACKENDS_MAX 65536
#endif
#ifndef LB_SOCK_REVNAT_MAX
#define LB_SOCK_REVNAT_MAX 65536
#endif

/* (ClusterIP, port, protocol) of a service frontend. */
struct lb4_key {
    __u32 address;     /* network byte order */
    __u16 dport;       /* network byte order */
    __u8  proto;       /* IPPROTO_TCP / IPPROTO_UDP */
    __u8  pad;
};

struct lb4_service {
    __u32 svc_id;      /* frontend id: selects the backend slots */
    __u32 count;       /* backend slots 0..count-1; 0 = no backend (connect fails) */
};

/* Backend slot of a frontend: slots are dense, so a random index picks one. */
struct lb4_backend_key {
    __u32 svc_id;
    __u32 slot;
};

struct lb4_backend {
    __u32 address;     /* pod IP, network byte order */
    __u16 port;        /* targetPort, network byte order */
    __u16 pad;
};

/* Per socket (cookie): what it was translated from and to, for the reverse
 * direction and so that further datagrams of a UDP socket stick to the backend. */
struct lb4_sock_revnat {
    __u32 vip;
    __u32 backend;
    __u16 vport;
    __u16 bport;
    __u32 svc_id;
};

BPF_TABLE_PINNED("hash", struct lb4_key, struct lb4_service, lb4_services, LB_SERVICES_MAX,
                 PIN_DIR "/lb4_services");
BPF_TABLE_PINNED("hash", struct lb4_backend_key, struct lb4_backend, lb4_backends, LB_BACKENDS_MAX,
                 PIN_DIR "/lb4_backends");
BPF_TABLE_PINNED("lru_hash", __u64, struct lb4_sock_revnat, lb4_sock_revnat, LB_SOCK_REVNAT_MAX,
                 PIN_DIR "/lb4_sock_revnat");

#endif /* WB_LB_H */
