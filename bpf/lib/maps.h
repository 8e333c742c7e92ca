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
BPF_TABLE_PINNED("hash", struct endpoint_key, struct endpoint_info, endpoints, ENDPOINTS_MAX,
                 PIN_DIR "/endpoints");

#endif /* WB_MAPS_H */
