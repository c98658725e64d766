/* hookq: see include/batchd/hookq.h. The runs are few (bounded by the finished jobs waiting
 * for their hooks), so a plain array in the order they were queued is enough: the oldest
 * waiting run gets the next free slot. */
#include "batchd/hookq.h"
#include "batchd/util.h"

#include <stdlib.h>
#include <string.h>

typedef enum hq_state {
    HQ_QUEUED,    /* waiting for a slot, not before not_before */
    HQ_RECORDING, /* its start is being recorded, then it is spawned */
    HQ_RUNNING,   /* deadline: its timeout */
    HQ_TERMED,    /* SIGTERM sent; deadline: when SIGKILL follows */
    HQ_KILLED,    /* SIGKILL sent; waiting for the exit */
} hq_state;

typedef struct hq_run {
    uint64_t id;
    void *ud;
    hq_state st;
    int attempt;
    int64_t not_before;
    int64_t deadline;
} hq_run;

struct hookq {
    hookq_limits lim;
    hq_run *runs;
    size_t n, cap;
    uint64_t next_id;
    bool stopped;
};

static const char *const outcome_names[HOOKQ_OUTCOMES] = {"ok", "failed", "killed", "timeout",
                                                          "not_run"};

const char *hookq_outcome_name(hookq_outcome o)
{
    return (unsigned)o < HOOKQ_OUTCOMES ? outcome_names[o] : "?";
}

hookq *hookq_new(const hookq_limits *l)
{
    hookq *q = xcalloc(1, sizeof *q);
    hookq_set_limits(q, l);
    q->next_id = 1;
    return q;
}

void hookq_free(hookq *q)
{
    if (!q)
        return;
    free(q->runs);
    free(q);
}

void hookq_set_limits(hookq *q, const hookq_limits *l)
{
    q->lim = *l;
    if (q->lim.max_parallel < 1)
        q->lim.max_parallel = 1;
    if (q->lim.retries < 0)
        q->lim.retries = 0;
}

uint64_t hookq_add(hookq *q, void *ud, int attempt, int64_t not_before)
{
    if (q->n == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 16;
        q->runs = xrealloc(q->runs, q->cap * sizeof *q->runs);
    }
    hq_run *r = &q->runs[q->n++];
    *r = (hq_run){.id = q->next_id++,
                  .ud = ud,
                  .st = HQ_QUEUED,
                  .attempt = attempt < 1 ? 1 : attempt,
                  .not_before = not_before};
    return r->id;
}

static hq_run *find(const hookq *q, uint64_t id)
{
    for (size_t i = 0; i < q->n; i++)
        if (q->runs[i].id == id)
            return &q->runs[i];
    return NULL;
}

static void remove_run(hookq *q, const hq_run *r)
{
    size_t i = (size_t)(r - q->runs);
    memmove(&q->runs[i], &q->runs[i + 1], (q->n - i - 1) * sizeof *q->runs);
    q->n--;
}

size_t hookq_running(const hookq *q)
{
    size_t k = 0;
    for (size_t i = 0; i < q->n; i++)
        k += q->runs[i].st != HQ_QUEUED;
    return k;
}

size_t hookq_count(const hookq *q)
{
    return q->n;
}

static hookq_action act(hookq_act_kind kind, const hq_run *r)
{
    return (hookq_action){.kind = kind, .run = r->id, .ud = r->ud, .attempt = r->attempt};
}

bool hookq_next(hookq *q, int64_t now, hookq_action *a)
{
    /* Timeouts first: a run that overstays is signalled even while others wait. */
    for (size_t i = 0; i < q->n; i++) {
        hq_run *r = &q->runs[i];
        if (r->st == HQ_RUNNING && now >= r->deadline) {
            r->st = HQ_TERMED;
            r->deadline = now + HOOKQ_KILL_AFTER_MS;
            *a = act(HOOKQ_ACT_TERM, r);
            return true;
        }
        if (r->st == HQ_TERMED && now >= r->deadline) {
            r->st = HQ_KILLED;
            *a = act(HOOKQ_ACT_KILL, r);
            return true;
        }
    }
    if (q->stopped || hookq_running(q) >= (size_t)q->lim.max_parallel)
        return false;
    for (size_t i = 0; i < q->n; i++) {
        hq_run *r = &q->runs[i];
        if (r->st == HQ_QUEUED && now >= r->not_before) {
            r->st = HQ_RECORDING;
            *a = act(HOOKQ_ACT_START, r);
            return true;
        }
    }
    return false;
}

int64_t hookq_wake_at(const hookq *q)
{
    int64_t at = INT64_MAX;
    bool slot = !q->stopped && hookq_running(q) < (size_t)q->lim.max_parallel;
    for (size_t i = 0; i < q->n; i++) {
        const hq_run *r = &q->runs[i];
        if ((r->st == HQ_RUNNING || r->st == HQ_TERMED) && r->deadline < at)
            at = r->deadline;
        else if (slot && r->st == HQ_QUEUED && r->not_before < at)
            at = r->not_before;
    }
    return at;
}

void hookq_started(hookq *q, uint64_t run, int64_t now)
{
    hq_run *r = find(q, run);
    if (!r || r->st != HQ_RECORDING)
        return;
    r->st = HQ_RUNNING;
    r->deadline = now + q->lim.timeout_ms;
}

/* 1 s after the first failed attempt, doubling, at most 30 s. */
static int64_t backoff_ms(int attempt)
{
    int64_t d = HOOKQ_BACKOFF_BASE_MS;
    for (int i = 1; i < attempt && d < HOOKQ_BACKOFF_CAP_MS; i++)
        d *= 2;
    return d < HOOKQ_BACKOFF_CAP_MS ? d : HOOKQ_BACKOFF_CAP_MS;
}

static hookq_outcome outcome_of(const hq_run *r, int exit_status, int term_signal, bool not_run)
{
    if (not_run)
        return HOOKQ_NOT_RUN;
    /* A run batchd signalled for its timeout counts as timed out however it then ended. */
    if (r->st == HQ_TERMED || r->st == HQ_KILLED)
        return HOOKQ_TIMEOUT;
    if (term_signal)
        return HOOKQ_SIGNAL;
    return exit_status == 0 ? HOOKQ_OK : HOOKQ_EXIT;
}

hookq_result hookq_exited(hookq *q, uint64_t run, int64_t now, int exit_status, int term_signal,
                          bool not_run)
{
    hookq_result res = {.outcome = HOOKQ_NOT_RUN, .attempts_max = q->lim.retries + 1};
    hq_run *r = find(q, run);
    if (!r)
        return res;
    res.outcome = outcome_of(r, exit_status, term_signal, not_run);
    res.attempt = r->attempt;
    if (res.outcome != HOOKQ_OK && r->attempt < res.attempts_max) {
        res.retry = true;
        res.retry_at = now + backoff_ms(r->attempt);
        r->st = HQ_QUEUED;
        r->attempt++;
        r->not_before = res.retry_at;
        return res;
    }
    remove_run(q, r);
    return res;
}

void hookq_cancel(hookq *q, uint64_t run)
{
    hq_run *r = find(q, run);
    if (r)
        remove_run(q, r);
}

void hookq_stop(hookq *q)
{
    q->stopped = true;
}
