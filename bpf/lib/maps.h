/* Every map of the lab datapath, declared once and pinned under PIN_DIR
 * (/sys/fs/bpf/workbench/<lab>), so that
 *  - all programs of a lab (TC and cgroup, separate compiles) share them,
 *  - the datapath keeps running when the agent dies, and a restarted agent
 *    opens the same maps again.
 * Sizes come in through cflags (-DIPCACHE_MAX=...), never by editing this file.
 */
#ifndef WB_MAPS_H
#define WB_MAPS_H

#include "types.h"

#ifndef PIN_DIR
#error "PIN_DIR must be passed as a cflag: -DPIN_DIR=\"/sys/fs/bpf/workbench/<lab>\""
#endif
#ifndef IPCACHE_MAX
#define IPCACHE_MAX 16384
#endif
#ifndef ENDPOINTS_MAX
#define ENDPOINTS_MAX 4096
#endif

BPF_TABLE_PINNED("lpm_trie", struct ipcache_key, struct ipcache_value, ipcache, IPCACHE_MAX,
                 PIN_DIR "/ipcache", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct local_ep_key, struct local_ep_value, local_endpoints, ENDPOINTS_MAX,
                 PIN_DIR "/local_endpoints");
BPF_TABLE_PINNED("hash", struct endpoint_key, struct endpoint_info, endpoints, ENDPOINTS_MAX,
                 PIN_DIR "/endpoints");

/* ---- policy datapath (lxc.bpf.c); sizes through cflags ---------------------- */
#ifndef POLICY_MAX
#define POLICY_MAX 65536   /* both generations together, during a swap */
#endif
#ifndef ENFORCE_MAX
#define ENFORCE_MAX 16384
#endif
#ifndef CT_MAX
#define CT_MAX 65536
#endif
#ifndef FRAG_MAX
#define FRAG_MAX 8192
#endif
#ifndef METRICS_MAX
#define METRICS_MAX 1024
#endif

BPF_TABLE_PINNED("lpm_trie", struct policy_key, struct policy_value, policy, POLICY_MAX,
                 PIN_DIR "/policy", BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", __u32, struct policy_state, policy_state, 1, PIN_DIR "/policy_state");
BPF_TABLE_PINNED("hash", struct enforce_key, __u32, policy_enforce, ENFORCE_MAX,
                 PIN_DIR "/policy_enforce");
/* LRU: a full table evicts the least recently used connection instead of
 * refusing new ones (Cilium's CT map is LRU as well). */
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_value, conntrack, CT_MAX, PIN_DIR "/conntrack");
BPF_TABLE_PINNED("lru_hash", struct ipv4_frag_key, struct ipv4_frag_ports, ipv4_frags, FRAG_MAX,
                 PIN_DIR "/ipv4_frags");
BPF_TABLE_PINNED("percpu_hash", struct metrics_key, struct metrics_value, metrics, METRICS_MAX,
                 PIN_DIR "/metrics");
/* [0]: ring-buffer records that could not be reserved (lost events). */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, events_lost, 1, PIN_DIR "/events_lost");

#endif /* WB_MAPS_H */
