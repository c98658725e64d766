/* iobatch: see iobatch.h. */
#include "iobatch.h"

#include "batchd/util.h"

#include <stdlib.h>

#define IOBATCH_FLIGHT_MAX 8

typedef struct lane lane;

typedef struct flight {
    lane *l;
    uv_work_t work;
    void **items;
    size_t n, cap;
    bool busy;
} flight;

struct lane {
    iobatch *b;
    const iobatch_lane_ops *ops;
    void **pending; /* added, waiting for the end of the turn or for a free slot */
    size_t n_pending, cap_pending;
    flight flights[IOBATCH_FLIGHT_MAX];
    size_t max_flight;
    size_t busy; /* flights on the pool */
};

struct iobatch {
    uv_loop_t *loop;
    uv_check_t check; /* flushes after the loop has polled for I/O */
    uv_idle_t idle;   /* while something is ready to go: the poll must not block */
    bool armed;
    bool stopped;
    int open_handles;
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
    return l->busy < l->max_flight && l->n_pending > 0;
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
        for (size_t k = 0; k < IOBATCH_FLIGHT_MAX; k++)
            free(b->lanes[i].flights[k].items);
    }
    free(b->lanes);
    void (*gone)(void *ud) = b->gone;
    void *ud = b->ud;
    free(b);
    if (gone)
        gone(ud);
}

static void flight_work(uv_work_t *w)
{
    flight *f = w->data;
    f->l->ops->run(f->l->b->ud, f->items, f->n);
}

static void lane_flush(lane *l);

static void flight_after(uv_work_t *w, int status)
{
    flight *f = w->data;
    lane *l = f->l;
    iobatch *b = l->b;
    size_t n = f->n;
    void **items = f->items;
    size_t cap = f->cap;
    f->items = NULL;
    f->cap = 0;
    f->n = 0;
    f->busy = false;
    l->busy--;
    /* What waits goes to the pool before this batch's results are handed over, so that the
     * next batch runs while the loop works through them (a claim batch's jobs cost the loop
     * more than the batch costs the pool). */
    if (status == 0)
        lane_flush(l);
    l->ops->after(b->ud, items, n, status);
    if (!f->items) {
        f->items = items; /* the buffer back, unless the flight took a new one */
        f->cap = cap;
    } else {
        free(items);
    }
    if (ready(l))
        arm(b);
    maybe_free(b);
}

static void flight_start(lane *l, flight *f, size_t n)
{
    if (f->cap < n) {
        f->cap = n;
        f->items = xrealloc(f->items, n * sizeof *f->items);
    }
    /* The oldest requests go first; the rest move up. */
    for (size_t i = 0; i < n; i++)
        f->items[i] = l->pending[i];
    l->n_pending -= n;
    for (size_t i = 0; i < l->n_pending; i++)
        l->pending[i] = l->pending[n + i];
    f->n = n;
    f->busy = true;
    l->busy++;
    int rc = uv_queue_work(l->b->loop, &f->work, flight_work, flight_after);
    if (rc < 0)
        flight_after(&f->work, rc); /* only with a broken loop: reported as failed requests */
}

static void lane_flush(lane *l)
{
    if (!ready(l))
        return;
    size_t slots = l->max_flight - l->busy;
    size_t min = l->ops->min_split ? l->ops->min_split : 1;
    size_t batches = (l->n_pending + min - 1) / min;
    if (batches > slots)
        batches = slots;
    for (size_t k = 0; k < IOBATCH_FLIGHT_MAX && batches > 0; k++) {
        flight *f = &l->flights[k];
        if (f->busy)
            continue;
        size_t n = (l->n_pending + batches - 1) / batches;
        flight_start(l, f, n);
        batches--;
    }
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
    b->ud = ud;
    b->gone = gone;
    b->n_lanes = n_lanes;
    b->lanes = xcalloc(n_lanes, sizeof *b->lanes);
    for (size_t i = 0; i < n_lanes; i++) {
        lane *l = &b->lanes[i];
        l->b = b;
        l->ops = &ops[i];
        l->max_flight = ops[i].max_flight == 0                   ? 1
                        : ops[i].max_flight > IOBATCH_FLIGHT_MAX ? IOBATCH_FLIGHT_MAX
                                                                 : ops[i].max_flight;
        for (size_t k = 0; k < IOBATCH_FLIGHT_MAX; k++) {
            l->flights[k].l = l;
            l->flights[k].work.data = &l->flights[k];
        }
    }
    uv_check_init(loop, &b->check);
    uv_idle_init(loop, &b->idle);
    b->check.data = b->idle.data = b;
    b->open_handles = 2;
    return b;
}

void iobatch_add(iobatch *b, size_t lane_no, void *item)
{
    lane *l = &b->lanes[lane_no];
    if (b->stopped) {
        l->ops->after(b->ud, &item, 1, UV_ECANCELED);
        return;
    }
    if (l->n_pending == l->cap_pending) {
        l->cap_pending = l->cap_pending ? l->cap_pending * 2 : 16;
        l->pending = xrealloc(l->pending, l->cap_pending * sizeof *l->pending);
    }
    l->pending[l->n_pending++] = item;
    if (l->busy < l->max_flight)
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
            l->ops->after(b->ud, l->pending, n, UV_ECANCELED);
    }
    uv_close((uv_handle_t *)&b->check, on_closed);
    uv_close((uv_handle_t *)&b->idle, on_closed);
}
