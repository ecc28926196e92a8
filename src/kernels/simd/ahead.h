/* Software prefetch for the per-channel kernels: while a kernel walks the runs of its block,
 * walkers over the same view issue the loads of data it will need soon.
 *
 * Why: a channel of an NCHW tensor is N runs of H*W values, C*H*W apart in memory. The
 * hardware prefetchers lose the stream at each jump to the next run and need a few demand
 * misses to pick it up again; measured on 16x256x56x56 float32 (runs of 12.5 KB), the
 * per-channel moments took 3.2 ms against 1.6 ms over the same tensor as one contiguous run.
 *
 * Two walkers, both at the kernel's position in the run it walks:
 *  - NK_AHEAD_RUN: the channel's next run (past the end of the block too, into the next
 *    block and then the next channel), one run ahead; not when it starts where the kernel's
 *    run ends (a contiguous stream, which the hardware prefetchers follow: the walker there
 *    made group norm's per-(n, c) backward passes 11-15% slower);
 *  - NK_AHEAD_CHANNEL, in the element-wise passes (normalize, bwd_apply) over channels of at
 *    most NK_AHEAD_CHANNEL_BYTES (summed over the tensors the kernel reads): the same run of
 *    the next channel, which the same thread takes next. A training forward or backward that
 *    keeps a channel in L2 between its two passes (batchnorm.c, fuse_channels) then reads the
 *    next channel while it writes this one, as a copy does, and its reduction pass finds the
 *    channel in L2. Two channels must fit in L2 together: half of 1 MiB.
 * Measured on the kernels alone, called as batchnorm.c calls them (16x256x56x56 float32,
 * 1 thread, ratio to a same-size copy or add, medians of alternated runs on a loaded 2-core
 * machine): normalize 1.02 with the run walker, 0.90-0.95 with both; fused forward 1.44 with
 * the run walker alone, 1.2-1.35 with both; fused backward 1.65 -> 1.3; the next-channel
 * walker in the reduction passes too made the fused backward 10% slower.
 *
 * Prefetches are hints: they never fault and never change a result. */
#ifndef NK_AHEAD_H
#define NK_AHEAD_H

#include <stdint.h>

#include "core/internal.h"

/* Channels of at most this many bytes (summed over the tensors a kernel reads) are fetched a
 * whole channel ahead (see above). */
#define NK_AHEAD_CHANNEL_BYTES ((int64_t)512 << 10)

/* Runs shorter than this are not prefetched at all: the walkers' cost per run (two calls
 * of nk_seg_next) then outweighs what they save (measured on 256x512x7x7 float32, runs of
 * 196 bytes: training forward 8.6 -> 11.7 times a copy with the walkers, backward 5.6 -> 9.4). */
#define NK_AHEAD_MIN_RUN_BYTES 2048

typedef enum { NK_AHEAD_RUN = 0, NK_AHEAD_CHANNEL = 1 } nk_ahead_kind;

typedef struct nk_ahead {
    const nk_cview *v;
    nk_seg_iter it;
    int64_t c;     /* the walker's channel */
    int next_run;  /* NK_AHEAD_RUN */
    int done;      /* nothing left to fetch */
} nk_ahead;

/* A walker of kind k for a kernel that walks values [r0, r1) of channel c and reads `bytes`
 * bytes per value (the sum of the element sizes of the tensors it reads). */
static inline void nk_ahead_begin(nk_ahead *a, nk_ahead_kind k, const nk_cview *v, int64_t c,
                                  int64_t r0, int64_t r1, int64_t bytes) {
    a->v = v;
    a->next_run = k == NK_AHEAD_RUN;
    a->done = 1;
    int64_t r = r0;
    if (a->next_run) { /* from the end of the kernel's first run (which may end its block) */
        const int64_t in = v->dims[v->nd - 1], left = in - r0 % in;
        r += left < r1 - r0 ? left : r1 - r0;
        if (r == v->M) c++, r = 0;
        a->c = c;
    } else {
        a->c = c + 1;
        if (v->M * bytes > NK_AHEAD_CHANNEL_BYTES) return;
    }
    if (a->c >= v->C) return;
    a->done = 0;
    nk_seg_begin(&a->it, v, a->c, r, v->M);
}

/* The run to fetch while the kernel walks its next run: its length (0: none) and its element
 * offsets in off. */
static inline int64_t nk_ahead_next(nk_ahead *a, int64_t *off) {
    if (a->done) return 0;
    int64_t n = nk_seg_next(&a->it, off);
    if (!n && a->next_run && a->c + 1 < a->v->C) {
        nk_seg_begin(&a->it, a->v, ++a->c, 0, a->v->M);
        n = nk_seg_next(&a->it, off);
    }
    a->done = n == 0;
    return n;
}

#endif
