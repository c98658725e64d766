/* spool_stuck: see spool_stuck_* in include/batchd/spool.h. A chained hash table keyed by
 * entry name, its entries also on a list in the order of their next retry (each failure
 * moves an entry to the tail with now + retry_ms, so the list stays sorted while the clock
 * moves forward): lookups are O(1) and finding the due retries costs only what is due. */
#include "batchd/spool.h"
#include "batchd/util.h"

#include <stdlib.h>
#include <string.h>

typedef struct stuck_entry {
    char *name;
    uint64_t hash;
    int64_t retry_at;
    int64_t logged_at;
    struct stuck_entry *chain; /* next in the same bucket */
    struct stuck_entry *prev;  /* retry order */
    struct stuck_entry *next;
} stuck_entry;

/* A struct, not a bare pointer, so the allocation's sizeof reads as what it is. */
typedef struct bucket {
    stuck_entry *first;
} bucket;

struct spool_stuck {
    bucket *buckets;
    size_t n_buckets; /* a power of two */
    size_t count;
    stuck_entry *head; /* earliest retry */
    stuck_entry *tail;
};

#define INITIAL_BUCKETS 64

static uint64_t name_hash(const char *s)
{
    uint64_t h = 14695981039346656037ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

spool_stuck *spool_stuck_new(void)
{
    spool_stuck *st = xcalloc(1, sizeof *st);
    st->n_buckets = INITIAL_BUCKETS;
    st->buckets = xcalloc(st->n_buckets, sizeof(bucket));
    return st;
}

void spool_stuck_free(spool_stuck *st)
{
    if (!st)
        return;
    stuck_entry *e = st->head;
    while (e) {
        stuck_entry *n = e->next;
        free(e->name);
        free(e);
        e = n;
    }
    free(st->buckets);
    free(st);
}

size_t spool_stuck_count(const spool_stuck *st)
{
    return st ? st->count : 0;
}

static stuck_entry **find_slot(const spool_stuck *st, const char *name, uint64_t h)
{
    stuck_entry **p = &st->buckets[h & (st->n_buckets - 1)].first;
    while (*p && ((*p)->hash != h || strcmp((*p)->name, name) != 0))
        p = &(*p)->chain;
    return p;
}

bool spool_stuck_has(const spool_stuck *st, const char *name)
{
    return st && *find_slot(st, name, name_hash(name)) != NULL;
}

bool spool_stuck_skip(void *ud, const char *name)
{
    return spool_stuck_has(ud, name);
}

static void order_unlink(spool_stuck *st, stuck_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        st->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        st->tail = e->prev;
    e->prev = e->next = NULL;
}

static void order_append(spool_stuck *st, stuck_entry *e)
{
    e->prev = st->tail;
    e->next = NULL;
    if (st->tail)
        st->tail->next = e;
    else
        st->head = e;
    st->tail = e;
}

static void grow(spool_stuck *st)
{
    size_t nb = st->n_buckets * 2;
    bucket *b = xcalloc(nb, sizeof(bucket));
    for (stuck_entry *e = st->head; e; e = e->next) {
        size_t i = e->hash & (nb - 1);
        e->chain = b[i].first;
        b[i].first = e;
    }
    free(st->buckets);
    st->buckets = b;
    st->n_buckets = nb;
}

bool spool_stuck_failed(spool_stuck *st, const char *name, int64_t now_ms, int64_t retry_ms,
                        int64_t relog_ms)
{
    uint64_t h = name_hash(name);
    stuck_entry *e = *find_slot(st, name, h);
    bool log_now = false;
    if (!e) {
        if (st->count >= st->n_buckets)
            grow(st);
        e = xcalloc(1, sizeof *e);
        e->name = xstrdup(name);
        e->hash = h;
        stuck_entry **b = &st->buckets[h & (st->n_buckets - 1)].first;
        e->chain = *b;
        *b = e;
        st->count++;
        e->logged_at = now_ms;
        log_now = true;
    } else {
        order_unlink(st, e);
        if (now_ms - e->logged_at >= relog_ms) {
            e->logged_at = now_ms;
            log_now = true;
        }
    }
    e->retry_at = now_ms + retry_ms;
    order_append(st, e);
    return log_now;
}

void spool_stuck_forget(spool_stuck *st, const char *name)
{
    if (!st)
        return;
    stuck_entry **p = find_slot(st, name, name_hash(name));
    stuck_entry *e = *p;
    if (!e)
        return;
    *p = e->chain;
    order_unlink(st, e);
    st->count--;
    free(e->name);
    free(e);
}

size_t spool_stuck_due(const spool_stuck *st, int64_t now_ms, size_t max, char **out)
{
    size_t n = 0;
    for (const stuck_entry *e = st ? st->head : NULL; e && n < max && e->retry_at <= now_ms;
         e = e->next)
        out[n++] = xstrdup(e->name);
    return n;
}

spool_stuck *spool_stuck_dup(const spool_stuck *st)
{
    spool_stuck *copy = spool_stuck_new();
    /* In retry order, each with its own retry time: the copy's order list stays sorted. */
    for (const stuck_entry *e = st ? st->head : NULL; e; e = e->next)
        spool_stuck_failed(copy, e->name, e->retry_at, 0, 0);
    return copy;
}
