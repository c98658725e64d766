/* iobatch: group commit on libuv's thread pool. Requests added to a lane during one turn of
 * the loop go out together as one pool job when the turn ends (a uv_check handle, so the
 * requests made while the loop polled for I/O are in it), and each lane has at most its
 * max_flight jobs in flight: what arrives meanwhile waits and goes out as the next batch. So
 * N records written in one turn cost at most max_flight pool jobs and as many directory
 * fsyncs, and the fsync-heavy lanes hold a bounded number of pool threads, leaving the rest
 * to validations. */
#ifndef BATCHD_IOBATCH_H
#define BATCHD_IOBATCH_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

typedef struct iobatch iobatch;

/* run does the batch's I/O on a pool thread; after delivers the results on the loop, with
 * status 0, or a libuv error (UV_ECANCELED for requests abandoned by iobatch_stop) when run
 * did not run. items are the pointers given to iobatch_add, in order. A lane may have up to
 * max_flight batches on the pool at once (0 counts as 1): a turn's requests are then split
 * among the free slots, at least min_split to a batch, so that their fsyncs overlap (a
 * journalling file system commits concurrent fsyncs together). Only for requests that may
 * run in any order against each other. */
typedef struct iobatch_lane_ops {
    void (*run)(void *ud, void **items, size_t n);
    void (*after)(void *ud, void **items, size_t n, int status);
    size_t max_flight;
    size_t min_split;
} iobatch_lane_ops;

/* gone(ud) is called once b has freed itself after iobatch_stop (ud may be freed then). */
iobatch *iobatch_new(uv_loop_t *loop, size_t n_lanes, const iobatch_lane_ops *ops, void *ud,
                     void (*gone)(void *ud));
/* Queues item on lane for the end of this turn; once stopped, hands it back at once (after
 * with UV_ECANCELED, from inside the call). */
void iobatch_add(iobatch *b, size_t lane, void *item);
/* Stopping: every request not yet sent to the pool is handed back at once (after with
 * UV_ECANCELED), the batches in flight end normally, and b frees itself once they have and
 * its handles are closed (the loop runs until then). NULL is fine. */
void iobatch_stop(iobatch *b);

#endif
