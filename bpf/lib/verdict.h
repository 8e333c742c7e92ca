/* Counting verdicts: per-CPU packets/bytes by (verdict, direction, reason),
 * Cilium's metrics map idea. */
#ifndef WB_VERDICT_H
#define WB_VERDICT_H

#include "maps.h"

static __always_inline void count_verdict(__u8 verdict, __u8 dir, __u16 reason, __u32 len)
{
    struct metrics_key key = {.verdict = verdict, .direction = dir, .reason = reason};
    struct metrics_value *val = metrics.lookup(&key);
    if (!val) {
        struct metrics_value zero = {};
        metrics.update(&key, &zero);
        val = metrics.lookup(&key);
        if (!val)
            return;
    }
    /* per-CPU value: no other CPU writes it, plain adds are enough */
    val->packets += 1;
    val->bytes += len;
}

#endif /* WB_VERDICT_H */
