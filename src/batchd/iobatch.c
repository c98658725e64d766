/* iobatch: see iobatch.h. */
#include "iobatch.h"

#include "batchd/util.h"

#include <stdlib.h>

typedef struct lane {
    iobatch *b;
    uv_work_t work;
    void **pending; /* added, waiting for the end of the turn or for the batch in flight */
    size_t n_pending, cap_pending;
    void **flight; /* the batch on the pool */
    size_t n_flight, cap_flight;
    bool busy;
} lane;

struct iobatch {
    uv_loop_t *loop;
    uv_check_t check; /* flushes after the loop has polled for I/O */
    uv_idle_t idle;   /* while something is ready to go: the poll must not block */
    bool armed;
    bool stopped;
    int open_handles;
    const iobatch_lane_ops *ops;
    void *ud;
    void (*gone)(void *ud);
    lane *lanes;
    size_t n_lanes;
};

static void on_check(uv_check_t *h);

static void on_idle(uv_idle_t *h)
{
    (void)h; /* only there so that uv_run does not block in poll: on_check flushes */
}

static bool ready(const lane *l)
{
    return !l->busy && l->n_pending > 0;
}

static void arm(iobatch *b)
{
    if (b->armed || b->stopped)
        return;
    b->armed = true;
    uv_check_start(&b->check, on_check);
    uv_idle_start(&b->idle, on_idle);
}

static void maybe_free(iobatch *b)
{
    if (!b->stopped || b->open_handles > 0)
        return;
    for (size_t i = 0; i < b->n_lanes; i++)
        if (b->lanes[i].busy)
            return;
    for (size_t i = 0; i < b->n_lanes; i++) {
        free(b->lanes[i].pending);
        free(b->lanes[i].flight);
    }
    free(b->lanes);
    void (*gone)(void *ud) = b->gone;
    void *ud = b->ud;
    free(b);
    if (gone)
        gone(ud);
}

static void lane_work(uv_work_t *w)
{
    lane *l = w->data;
    l->b->ops[l - l->b->lanes].run(l->b->ud, l->flight, l->n_flight);
}

static void lane_after(uv_work_t *w, int status)
{
    lane *l = w->data;
    iobatch *b = l->b;
    size_t n = l->n_flight;
    l->n_flight = 0;
    b->ops[l - b->lanes].after(b->ud, l->flight, n, status);
    l->busy = false;
    if (ready(l))
        arm(b);
    maybe_free(b);
}

static void lane_flush(lane *l)
{
    if (!ready(l))
        return;
    /* Swap the arrays: the pending ones go out, the flight ones (empty) take new requests. */
    void **items = l->pending;
    size_t cap = l->cap_pending;
    l->pending = l->flight;
    l->cap_pending = l->cap_flight;
    l->flight = items;
    l->cap_flight = cap;
    l->n_flight = l->n_pending;
    l->n_pending = 0;
    l->busy = true;
    int rc = uv_queue_work(l->b->loop, &l->work, lane_work, lane_after);
    if (rc < 0)
        lane_after(&l->work, rc); /* only with a broken loop: reported as failed requests */
}

static void on_check(uv_check_t *h)
{
    iobatch *b = h->data;
    for (size_t i = 0; i < b->n_lanes; i++)
        lane_flush(&b->lanes[i]);
    /* What is left waits for a batch in flight; its end arms again. */
    b->armed = false;
    uv_check_stop(&b->check);
    uv_idle_stop(&b->idle);
}

iobatch *iobatch_new(uv_loop_t *loop, size_t n_lanes, const iobatch_lane_ops *ops, void *ud,
                     void (*gone)(void *ud))
{
    iobatch *b = xcalloc(1, sizeof *b);
    b->loop = loop;
    b->ops = ops;
    b->ud = ud;
    b->gone = gone;
    b->n_lanes = n_lanes;
    b->lanes = xcalloc(n_lanes, sizeof *b->lanes);
    for (size_t i = 0; i < n_lanes; i++) {
        b->lanes[i].b = b;
        b->lanes[i].work.data = &b->lanes[i];
    }
    uv_check_init(loop, &b->check);
    uv_idle_init(loop, &b->idle);
    b->check.data = b->idle.data = b;
    b->open_handles = 2;
    return b;
}

void iobatch_add(iobatch *b, size_t lane_no, void *item)
{
    if (b->stopped) {
        b->ops[lane_no].after(b->ud, &item, 1, UV_ECANCELED);
        return;
    }
    lane *l = &b->lanes[lane_no];
    if (l->n_pending == l->cap_pending) {
        l->cap_pending = l->cap_pending ? l->cap_pending * 2 : 16;
        l->pending = xrealloc(l->pending, l->cap_pending * sizeof *l->pending);
    }
    l->pending[l->n_pending++] = item;
    if (!l->busy)
        arm(b);
}

static void on_closed(uv_handle_t *h)
{
    iobatch *b = h->data;
    b->open_handles--;
    maybe_free(b);
}

void iobatch_stop(iobatch *b)
{
    if (!b || b->stopped)
        return;
    b->stopped = true;
    for (size_t i = 0; i < b->n_lanes; i++) {
        lane *l = &b->lanes[i];
        size_t n = l->n_pending;
        l->n_pending = 0;
        if (n > 0)
            b->ops[i].after(b->ud, l->pending, n, UV_ECANCELED);
    }
    uv_close((uv_handle_t *)&b->check, on_closed);
    uv_close((uv_handle_t *)&b->idle, on_closed);
}
