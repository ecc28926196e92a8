/* Software prefetch of the next run of a per-channel walk.
 *
 * Why: a channel of an NCHW tensor is N runs of H*W values, C*H*W apart in memory, and the
 * per-channel kernels walk them in that order. The hardware prefetchers lose the stream at
 * each jump to the next run and need a few demand misses to pick it up again. So while a
 * kernel walks one run, it prefetches the next one (past the end of its block too: into the
 * channel's next block and then the next channel, which the same thread usually takes next)
 * at the same position: one prefetch per 64 bytes, one run ahead.
 *
 * Prefetches are hints: they never fault and never change a result. */
#ifndef NK_AHEAD_H
#define NK_AHEAD_H

#include <stdint.h>

#include "core/internal.h"

typedef struct nk_ahead {
    const nk_cview *v;
    nk_seg_iter it; /* the runs of channel c from the walk's first value to the channel's end */
    int64_t c;
} nk_ahead;

/* A walk of channel c from value r: the first nk_ahead_next is the run after r's run. */
static inline void nk_ahead_begin(nk_ahead *a, const nk_cview *v, int64_t c, int64_t r) {
    int64_t off[NK_CV_MAXT];
    a->v = v;
    a->c = c;
    nk_seg_begin(&a->it, v, c, r, v->M);
    (void)nk_seg_next(&a->it, off);
}

/* The run after the previous one (offsets in off): its length, 0 past the last channel. */
static inline int64_t nk_ahead_next(nk_ahead *a, int64_t *off) {
    int64_t n = nk_seg_next(&a->it, off);
    if (!n && a->c + 1 < a->v->C) {
        nk_seg_begin(&a->it, a->v, ++a->c, 0, a->v->M);
        n = nk_seg_next(&a->it, off);
    }
    return n;
}

#endif
